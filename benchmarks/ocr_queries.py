"""Eight ``ocr`` queries on one image against one query: one engine pass, shared.

A reply with 8 ``[VISION: ocr "..."]`` tags that differ only in ``query`` (a filter over the same read) used to
run 8 full engine passes. Now the dispatcher runs the pass once per image and engine configuration and applies
each query to a copy. Measured through the router's Dispatcher with a memory-only result cache (a fresh one per
round, so every round starts cold), on a real page of tests/data/real/ocr, engines warm:

- one query: one ``ocr "..."`` call;
- 8 queries: 8 calls differing only in ``query``, dispatched together (as the tags of one reply are);
- 8 passes: the same 8 queries each as its own ``analyze`` call (what 8 separate passes cost).

Target (issue 18): 8 queries <= 2x one query.

    python benchmarks/ocr_queries.py [--engine onnx] [--image debian-reference-en-ch09-1280] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experts.images import decode_image  # noqa: E402
from experts.registry import Registry  # noqa: E402
from router.core.cache import ResultCache  # noqa: E402
from router.core.dispatch import Dispatcher, ExpertCall  # noqa: E402

QUERIES = ["Debian", "package", "apt", "kernel", "network", "config", "sudo", "文字"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="onnx", choices=["onnx", "paddle", "auto"])
    parser.add_argument("--image", default="debian-reference-en-ch09-1280", help="a file stem in tests/data/real/ocr")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from experts.ocr import OcrExpert

    path = next((ROOT / "tests" / "data" / "real" / "ocr").glob(args.image + ".*"))
    image = decode_image(path.read_bytes())
    registry = Registry()
    registry.register(OcrExpert)
    registry.configure("ocr", engine=args.engine)
    expert = registry.get("ocr")
    expert.load()
    expert.analyze(image, {})  # warm-up

    def dispatched(queries: list[str]) -> float:
        dispatcher = Dispatcher(registry, ResultCache(), max_concurrency=8)  # memory only, cold
        t = time.perf_counter()
        results = dispatcher.run_sync([ExpertCall(image, 1, "ocr", query=q) for q in queries])
        took = time.perf_counter() - t
        assert all(r.error is None for r in results), [r.error for r in results]
        return took

    def separate(queries: list[str]) -> float:
        t = time.perf_counter()
        for q in queries:
            expert.analyze(image, {"query": q})
        return time.perf_counter() - t

    one, eight, passes = [], [], []
    for _ in range(args.rounds):
        one.append(dispatched(QUERIES[:1]))
        eight.append(dispatched(QUERIES))
        passes.append(separate(QUERIES))
    m1, m8, mp = (statistics.median(v) * 1000 for v in (one, eight, passes))
    print(f"ocr on {path.name} ({image.width}x{image.height}), engine {expert.engine_for().name}, {args.rounds} rounds")
    print(f"{'':28s} {'ms':>8s} {'x one':>7s}")
    print(f"{'one query':28s} {m1:8.0f} {1:7.2f}")
    print(f"{'8 queries, one shared pass':28s} {m8:8.0f} {m8 / m1:7.2f}")
    print(f"{'8 queries, 8 passes':28s} {mp:8.0f} {mp / m1:7.2f}")
    print(f"8 queries / one query = {m8 / m1:.2f}x (target <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

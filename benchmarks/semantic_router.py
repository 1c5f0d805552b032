"""The semantic router's costs: load time and memory (once per process), and the time of one decision.

Each load is measured in a fresh Python process (what a CLI run or a server start pays): import + load of the
encoder + the exemplars' vectors, from an empty vector cache ("cold", the first start) and from a filled one
("warm", every later start); peak RSS before and after. Decisions are timed warm, one question at a time, over
the prompts of a suite (default: the shipped eval suite), as the run loop asks them.

    python benchmarks/semantic_router.py [--suite FILE] [--runs 3]

Targets (issue 23): load <= 1.5 s and <= 150 MB; a warm decision <= 15 ms p95 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_LOAD = """
import json, resource, sys, time
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
from router.core.semantic import SemanticRouter
r = SemanticRouter.load(cache_dir=sys.argv[1])
r.route("what does the sign say?")
t1 = time.perf_counter()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": t1 - t0, "rss_before_mb": rss0 / 1024, "rss_after_mb": rss1 / 1024}))
"""


def load_once(cache: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD, cache], capture_output=True, text=True, check=True, cwd=str(ROOT)
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", help="prompts to time decisions on (default: the shipped eval suite)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per load measurement")
    args = ap.parse_args()

    from router.apps.evaluate import load_suite
    from router.core.semantic import SemanticRouter

    cold, warm = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            cold.append(load_once(d))
            warm.append(load_once(d))
    router = SemanticRouter.load(cache_dir=tempfile.mkdtemp())
    prompts = [c.prompt for c in load_suite(args.suite).cases]
    times = []
    for _ in range(3):
        for p in prompts:
            t0 = time.perf_counter()
            router.route(p)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q / 100 * len(times)))]

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"semantic router: {sum(len(r.examples) for r in router.routes)} exemplars in {len(router.routes)} routes")
    print(f"  leave-one-out accuracy on the exemplars: {router.loo_accuracy:.3f}")
    for name, rows in (("cold (empty vector cache)", cold), ("warm (vectors cached)", warm)):
        print(
            f"  load, {name}: {med(rows, 'load_s'):.2f} s median of {len(rows)}; peak RSS "
            f"{med(rows, 'rss_after_mb'):.0f} MB (python alone {med(rows, 'rss_before_mb'):.0f} MB: "
            f"+{med(rows, 'rss_after_mb') - med(rows, 'rss_before_mb'):.0f} MB)"
        )
    print(
        f"  decision, warm, {len(times)} questions: p50 {pct(50):.1f} ms, p95 {pct(95):.1f} ms, max {times[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()

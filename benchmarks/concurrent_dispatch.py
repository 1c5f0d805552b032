"""Concurrent dispatch: several experts on one image take about the slowest one's time.

Three experts of known cost (they sleep 0.20, 0.30 and 0.40 s, like engines waiting on a device or
a remote service) run on one image through the real Dispatcher; the ratio wall / slowest shows the
dispatch overhead. Then the real ocr + detect experts (CPU-bound, 2 cores here) alone and together.

    python benchmarks/concurrent_dispatch.py [--repeats 10]

Target (issue 2): wall time / slowest expert <= 1.15.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from experts.base import Expert, ExpertArgs  # noqa: E402
from experts.images import decode_image  # noqa: E402
from experts.registry import Registry, default_registry  # noqa: E402
from router.core.cache import ResultCache  # noqa: E402
from router.core.dispatch import Dispatcher, ExpertCall  # noqa: E402

COSTS = {"cost20": 0.20, "cost30": 0.30, "cost40": 0.40}


def known_cost_expert(name: str, cost: float) -> type[Expert]:
    def _analyze(self, image, args):
        time.sleep(cost)
        return self.new_result(image, caption=name)

    return type(name, (Expert,), {"name": name, "Args": ExpertArgs, "_analyze": _analyze})


def main(repeats: int) -> None:
    reg = Registry()
    for name, cost in COSTS.items():
        reg.register(known_cost_expert(name, cost))
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), "white").save(buf, "PNG")
    img = decode_image(buf.getvalue())
    walls = []
    for _ in range(repeats):
        d = Dispatcher(reg, ResultCache(max_items=0))
        t0 = time.perf_counter()
        results = d.run_sync([ExpertCall(img, 1, n) for n in COSTS])
        walls.append(time.perf_counter() - t0)
        assert all(r.error is None for r in results)
    slowest = max(COSTS.values())
    ratio = statistics.median(walls) / slowest
    print(f"known-cost experts {', '.join(f'{k}={v:.2f}s' for k, v in COSTS.items())}; {repeats} runs")
    print(
        f"  sum of costs {sum(COSTS.values()):.2f} s, slowest {slowest:.2f} s, "
        f"median wall {statistics.median(walls):.3f} s"
    )
    print(f"  wall / slowest = {ratio:.3f} (target <= 1.15): {'PASS' if ratio <= 1.15 else 'FAIL'}")

    real = default_registry()
    names = [n for n in ("ocr", "detect") if real.resolve(n)]
    if len(names) < 2:
        print("  (real ocr/detect not installed: skipped the CPU-bound comparison)")
        return
    from router.apps.demo import demo_image_bytes

    demo = decode_image(demo_image_bytes())
    d = Dispatcher(real, ResultCache(max_items=0))
    d.run_sync([ExpertCall(demo, 1, n) for n in names])  # load engines
    alone = {}
    for n in names:
        ts = []
        for _ in range(max(3, repeats // 2)):
            t0 = time.perf_counter()
            d.run_sync([ExpertCall(demo, 1, n)])
            ts.append(time.perf_counter() - t0)
        alone[n] = statistics.median(ts)
    ts = []
    for _ in range(max(3, repeats // 2)):
        t0 = time.perf_counter()
        d.run_sync([ExpertCall(demo, 1, n) for n in names])
        ts.append(time.perf_counter() - t0)
    both = statistics.median(ts)
    print(f"real experts on the demo image (CPU-bound, {len(names)} cores' worth of work on this machine):")
    for n, t in alone.items():
        print(f"  {n:<7} alone {t * 1000:7.1f} ms")
    print(
        f"  together {both * 1000:7.1f} ms = {both / max(alone.values()):.2f} x the slowest, "
        f"{both / sum(alone.values()):.2f} x their sum"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    main(ap.parse_args().repeats)

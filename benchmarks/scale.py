"""Images per second: `vision-router batch` on local threads vs the same run as a Ray Data pipeline.

Both runs take the same folder (real photos and scans from scikit-image, repeated under distinct
bytes so the cache never serves one), the same experts and no result cache, side by side in one
process. The Ray run starts a local cluster with the CPUs given (default: all of this machine's);
its start-up is reported apart from the pipeline (a cluster is started once, not per batch).

    python benchmarks/scale.py [--images 24] [--experts ocr,detect] [--workers 2] [--cpus N]

Per expert, the script also times a single-image analysis (after a warm-up), which is what the
scaling model in docs/scale.md multiplies by the number of actors.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from experts.images import decode_image  # noqa: E402
from experts.registry import default_registry  # noqa: E402
from router.apps.batch import parse_experts, run_batch  # noqa: E402
from router.core.config import Settings  # noqa: E402
from router.core.orchestrator import Orchestrator  # noqa: E402

PHOTOS = ("page", "text", "coins", "camera", "astronaut", "coffee")


def make_folder(root: Path, n: int) -> None:
    from skimage import data

    base = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    for i in range(n):
        img = base[i % len(base)].copy()
        img.putpixel((0, 0), (i % 256, i // 256 % 256, 7))  # distinct bytes, same content
        img.save(root / f"img{i:03d}.png")


def per_image_ms(names: list[str], sample: Path) -> dict[str, float]:
    reg = default_registry()
    img = decode_image(sample.read_bytes(), source=str(sample))
    out = {}
    for name in names:
        expert = reg.get(name)
        expert.load()
        expert.analyze(img, {})  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            expert.analyze(img, {})
        out[name] = (time.perf_counter() - t0) / 3 * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--experts", default="ocr,detect")
    ap.add_argument("--workers", type=int, default=2, help="local threads (images in flight)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    args = ap.parse_args()

    import ray

    from router.apps.scale import run_batch_ray

    specs = parse_experts(args.experts)
    settings = Settings(cache_dir="")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        make_folder(folder, args.images)
        single = per_image_ms([n for n, _ in specs], folder / "img000.png")

        t0 = time.perf_counter()
        orch = Orchestrator(settings, registry=default_registry())
        local = run_batch([folder], orch, stream=io.StringIO(), experts=specs, workers=args.workers, progress=False)
        local_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_ray = run_batch_ray([folder], settings, stream=io.StringIO(), experts=specs, progress=False)
        ray_s = time.perf_counter() - t0
        ray.shutdown()

    n = args.images
    print(f"{n} images, experts {args.experts}, {os.cpu_count()} CPUs here; Ray cluster of {args.cpus} CPUs")
    for name, ms in single.items():
        print(f"  {name}: {ms:.0f} ms per image on one worker (warm) = {1000 / ms:.2f} images/s per actor")
    print(
        f"local threads (--workers {args.workers}): {local_s:.1f} s = {n / local_s:.2f} images/s "
        f"({local.done} done, {local.failed} failed; expert load included)"
    )
    print(
        f"Ray local: {ray_s:.1f} s = {n / ray_s:.2f} images/s ({on_ray.done} done, {on_ray.failed} failed; "
        f"actor start and model load included; cluster start-up {start_s:.1f} s not included)"
    )
    print(f"Ray / local images/s: {local_s / ray_s:.2f}x")


if __name__ == "__main__":
    main()

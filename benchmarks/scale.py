"""Images per second: `vision-router batch` on local threads vs the same run as a Ray Data pipeline.

Both runs take the same folder (real photos and scans from scikit-image, repeated under distinct
bytes so the cache never serves one), the same experts and no result cache, side by side in one
process. The Ray run starts a local cluster with the CPUs given (default: all of this machine's), or a
cluster of several nodes on this machine (``--nodes 2 --cpus 1``: two nodes of one CPU each, started
with ``ray.cluster_utils.Cluster`` on the loopback address 127.0.0.2), or joins an existing cluster
(``--address HEAD:PORT``; with token auth, set ``RAY_AUTH_MODE=token`` and the token as for any
driver). Its start-up is reported apart from the pipeline (a cluster is started once, not per batch).

    python benchmarks/scale.py [--images 24] [--experts ocr,detect] [--workers 2] [--cpus N]
    python benchmarks/scale.py --images 8 --nodes 2 --cpus 1      # the cluster of issue 20
    python benchmarks/scale.py --address 10.0.0.1:6379

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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from experts.images import decode_image  # noqa: E402
from experts.registry import default_registry  # noqa: E402
from router.apps.batch import parse_experts, run_batch  # noqa: E402
from router.apps.scale import alive_nodes, describe_nodes, run_batch_ray  # noqa: E402
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


def start_ray(address: str | None, nodes: int, cpus: int) -> Callable[[], None]:
    """Join ``address``, or start one local node of ``cpus`` CPUs, or a Cluster of ``nodes`` such
    nodes (each worker imports this checkout); returns what stops it."""
    import ray

    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return ray.shutdown
    if nodes <= 1:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        return ray.shutdown
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    node = {"num_cpus": cpus, "node_ip_address": "127.0.0.2"}  # loopback (Ray rewrites 127.0.0.1)
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)

    def stop() -> None:
        ray.shutdown()
        cluster.shutdown()

    return stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--experts", default="ocr,detect")
    ap.add_argument("--workers", type=int, default=2, help="local threads (images in flight)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of each local Ray node (default: all, shared out)")
    ap.add_argument("--nodes", type=int, default=1, help="nodes of the local Ray cluster (more than 1: a Cluster)")
    ap.add_argument("--address", default=None, help="join this existing Ray cluster instead of starting one")
    args = ap.parse_args()
    args.cpus = args.cpus or max(1, (os.cpu_count() or 1) // max(1, args.nodes))

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
        stop = start_ray(args.address, args.nodes, args.cpus)
        start_s = time.perf_counter() - t0
        shape = describe_nodes(alive_nodes())
        try:
            t0 = time.perf_counter()
            on_ray = run_batch_ray([folder], settings, stream=io.StringIO(), experts=specs, progress=False)
            ray_s = time.perf_counter() - t0
        finally:
            stop()

    n = args.images
    where = f"existing cluster at {args.address}" if args.address else "started here"
    print(f"{n} images, experts {args.experts}, {os.cpu_count()} CPUs here; Ray cluster ({where}): {shape}")
    for name, ms in single.items():
        print(f"  {name}: {ms:.0f} ms per image on one worker (warm) = {1000 / ms:.2f} images/s per actor")
    print(
        f"local threads (--workers {args.workers}): {local_s:.1f} s = {n / local_s:.2f} images/s "
        f"({local.done} done, {local.failed} failed; expert load included)"
    )
    print(
        f"Ray: {ray_s:.1f} s = {n / ray_s:.2f} images/s ({on_ray.done} done, {on_ray.failed} failed; "
        f"actor start and model load included; cluster start-up {start_s:.1f} s not included)"
    )
    print(f"Ray / local images/s: {local_s / ray_s:.2f}x")


if __name__ == "__main__":
    main()

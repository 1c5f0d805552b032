"""The router image: build time, size, and start to healthy, next to a plain one-stage image built the same way.

    python benchmarks/container_image.py                 # podman (docker with --engine docker)
    python benchmarks/container_image.py --runs 7 --no-baseline

It builds the repository's Dockerfile (default extras: onnx, people, serve) twice, from scratch (--no-cache: every
wheel downloaded) and again after a change to the code only (the dependency layer cached), and a baseline image
that installs the same extras in one stage (`pip install '.[onnx,people,serve]'` on the same base). Start to
healthy is timed from `run -d` to the first 200 from /_vision/health through the published port, and from the
container's own start (its State.StartedAt) to that answer; the two images alternate, so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "python:3.11-slim-bookworm"
OFFICIAL_SLIM_MB = 130  # the official python:3.11-slim-bookworm, as the registry lists it (compressed layers differ)
BASELINE = """FROM python:3.11-slim-bookworm
COPY . /src
RUN pip install --no-cache-dir '/src[onnx,people,serve]'
ENTRYPOINT ["vision-router"]
CMD ["serve", "--host", "0.0.0.0", "--allow-remote"]
"""


def sh(*args: str, timeout: float = 3600) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[:3])} ... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def build(engine: str, tag: str, context: Path, *extra: str) -> float:
    opts = ["--format", "docker", "--isolation", "chroot", "--network", "host"] if engine == "podman" else []
    start = time.monotonic()
    sh(engine, "build", *opts, *extra, "-t", tag, str(context))
    return time.monotonic() - start


def size_mb(engine: str, tag: str) -> float:
    return int(json.loads(sh(engine, "image", "inspect", tag))[0]["Size"]) / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_to_healthy(engine: str, tag: str, timeout: float = 60) -> tuple[float, float]:
    """(from `run -d`, from the container's start) to the first 200 from the health endpoint, in seconds."""
    port = free_port()
    t0 = time.monotonic()
    wall0 = time.time()
    cid = sh(engine, "run", "-d", "-p", f"127.0.0.1:{port}:11435", tag).strip()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_vision/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"error: {tag} not healthy after {timeout:.0f} s")
            time.sleep(0.02)
        t_healthy, wall_healthy = time.monotonic(), time.time()
        started = json.loads(sh(engine, "inspect", cid))[0]["State"]["StartedAt"]
        started_at = _parse_time(started) or wall0
        return t_healthy - t0, wall_healthy - started_at
    finally:
        subprocess.run([engine, "rm", "-f", "-v", "-t", "1", cid], capture_output=True)


def _parse_time(text: str) -> float | None:
    # "2026-12-07 22:40:01.123456789 +0000 UTC" (podman) or RFC 3339 (docker): to the microsecond.
    text = text.replace("T", " ").split(" +")[0].rstrip("Z")
    date, _, frac = text.partition(".")
    try:
        return datetime.fromisoformat(f"{date}.{(frac + '000000')[:6]}+00:00").timestamp()
    except ValueError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="podman" if shutil.which("podman") else "docker")
    ap.add_argument("--runs", type=int, default=5, help="starts per image (alternating)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the one-stage image")
    ap.add_argument("--tag", default="localhost/ollama-vision-router:bench")
    args = ap.parse_args()
    engine = args.engine
    print(f"engine: {sh(engine, '--version').strip()}; base {BASE}: {size_mb(engine, BASE):.0f} MB here")

    cold = build(engine, args.tag, ROOT, "--no-cache")
    with tempfile.TemporaryDirectory() as tmp:
        # A change to the code only: a copy of the tree with one more line in a module.
        ctx = Path(tmp) / "tree"
        shutil.copytree(ROOT, ctx, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", ".ci-*"))
        with open(ctx / "router" / "__init__.py", "a", encoding="utf-8") as f:
            f.write("\n# benchmark: a code change\n")
        code_only = build(engine, args.tag + "-edit", ctx)
        baseline_tag = args.tag + "-onestage"
        one_stage = None
        if not args.no_baseline:
            (ctx / "Containerfile.onestage").write_text(BASELINE, "utf-8")
            one_stage = build(engine, baseline_tag, ctx, "--no-cache", "-f", str(ctx / "Containerfile.onestage"))
    subprocess.run([engine, "rmi", "-f", args.tag + "-edit"], capture_output=True)

    size = size_mb(engine, args.tag)
    base = size_mb(engine, BASE)
    print(f"build, from scratch: {cold:.0f} s; after a code-only change: {code_only:.0f} s")
    official = size - base + OFFICIAL_SLIM_MB
    print(f"size: {size:.0f} MB ({size - base:.0f} MB over the base; on the official slim base ~{official:.0f} MB)")
    tags = [args.tag] + ([] if one_stage is None else [baseline_tag])
    times: dict[str, list[tuple[float, float]]] = {t: [] for t in tags}
    start_to_healthy(engine, args.tag)  # the first start reads the image from disk: not counted
    for _ in range(args.runs):
        for tag in tags:
            times[tag].append(start_to_healthy(engine, tag))
    for tag in tags:
        run_s = statistics.median(t[0] for t in times[tag])
        own_s = statistics.median(t[1] for t in times[tag])
        print(
            f"{tag}: start to healthy, median of {args.runs}: {run_s:.2f} s from `run -d`, "
            f"{own_s:.2f} s from the container's start"
        )
    if one_stage is not None:
        b_size = size_mb(engine, baseline_tag)
        mine = statistics.median(t[0] for t in times[args.tag])
        theirs = statistics.median(t[0] for t in times[baseline_tag])
        print(
            f"one-stage baseline: build {one_stage:.0f} s, {b_size:.0f} MB; multi-stage / one-stage: size "
            f"{size / b_size:.2f}x, build from scratch {cold / one_stage:.2f}x, start to healthy {mine / theirs:.2f}x"
        )
        subprocess.run([engine, "rmi", "-f", baseline_tag], capture_output=True)


if __name__ == "__main__":
    main()

"""Peak memory of one expert on one very big real photo: ``vision-router expert run NAME IMAGE`` in a fresh
process, its peak resident set size read from the kernel (``os.wait4``'s ``ru_maxrss``, exact, no polling).

The photo is scikit-image's coffee cup (a real camera photo, no download) upscaled to 7000x7000 (49 MP,
just under the default 50 MP pixel limit) with Lanczos and saved as a JPEG, the way a phone's full-size
photo arrives. Each expert also runs on the original 400x600 photo, so the figure the big image adds
shows next to what the interpreter, OpenCV and the OCR engine cost anyway.

    .venv/bin/python benchmarks/big_image_memory.py [--experts detect,ocr] [--side 7000] [--query ...] [--root DIR]

``--root`` runs another checkout's code (e.g. the main branch) for a before/after in one session.

Prints one row per expert: peak RSS on the small photo, on the big one, and the difference. The target
(issue 19) is a peak under 1 GB for one 49 MP request.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_photos(folder: Path, side: int) -> tuple[Path, Path]:
    """The small real photo and its ``side`` x ``side`` upscale, as JPEG files (made once per folder)."""
    from PIL import Image
    from skimage import data as sk

    small, big = folder / "coffee.jpg", folder / f"coffee-{side}.jpg"
    if not small.exists():
        Image.fromarray(sk.coffee()).save(small, quality=92)
    if not big.exists():
        with Image.open(small) as im:
            im.resize((side, side), Image.Resampling.LANCZOS).save(big, quality=90)
    return small, big


def peak_rss(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float, int, str]:
    """Peak RSS (MB) and wall time of ``cmd`` run to its end, its exit status and the last line of stderr."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode("utf-8", "replace").strip().splitlines()
    # ru_maxrss is in KiB on Linux
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, proc.returncode, tail[-1] if tail else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", default="detect,ocr", help="comma-separated expert names")
    ap.add_argument("--side", type=int, default=7000, help="side of the big square photo (px)")
    ap.add_argument("--query", action="append", default=[], help="also run detect with this query (repeatable)")
    ap.add_argument("--folder", default=None, help="where the photos are kept (default: a temp folder)")
    ap.add_argument(
        "--root", default=str(ROOT), help="the checkout whose code runs (default: this one), for before/after"
    )
    args = ap.parse_args()

    folder = Path(args.folder or Path(tempfile.gettempdir()) / "vision-router-bigimage")
    folder.mkdir(parents=True, exist_ok=True)
    small, big = make_photos(folder, args.side)
    env = dict(os.environ, PYTHONPATH=args.root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("VISION_ROUTER_CACHE", "")  # no on-disk cache: every run does the work
    runs = [(name, None) for name in args.experts.split(",") if name]
    runs += [("detect", q) for q in args.query]
    print(f"photo: {big.name} {args.side}x{args.side} ({big.stat().st_size / 1e6:.1f} MB JPEG); peak RSS in MB")
    print(f"{'expert':<22} {'small':>8} {'big':>8} {'big-small':>10} {'big s':>7}  status")
    for name, query in runs:
        row = []
        for image in (small, big):
            cmd = [sys.executable, "-c", "from router.commands import main; main()", "expert", "run", name, str(image)]
            if query:
                cmd.append(query)
            row.append(peak_rss(cmd, env, args.root))
        (s_mb, _, s_rc, s_err), (b_mb, b_s, b_rc, b_err) = row
        label = name + (f" {query!r}" if query else "")
        status = "ok" if s_rc == b_rc == 0 else f"exit {s_rc}/{b_rc}: {b_err or s_err}"
        print(f"{label:<22} {s_mb:>8.0f} {b_mb:>8.0f} {b_mb - s_mb:>10.0f} {b_s:>7.1f}  {status}")


if __name__ == "__main__":
    main()

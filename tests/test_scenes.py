"""The test scenes draw with the fonts shipped in tests/data/fonts, never with the machine's own."""

from __future__ import annotations

import json

import pytest
from PIL import ImageFont

from experts.images import decode_image
from tests import scenes


@pytest.fixture
def no_system_fonts(monkeypatch):
    """A machine without fonts: any font file outside the shipped folder fails to load."""
    real = ImageFont.truetype

    def guarded(font=None, *args, **kwargs):
        if isinstance(font, str) and not font.startswith(str(scenes.FONT_DIR)):
            raise OSError(f"no system fonts here: {font}")
        return real(font, *args, **kwargs)

    monkeypatch.setattr(ImageFont, "truetype", guarded)


def test_every_scene_font_is_shipped_with_its_licence():
    for name, path in scenes.FONTS.items():
        assert path.startswith(str(scenes.FONT_DIR)) and scenes.font_available(name), name
    assert (scenes.FONT_DIR / "OFL.txt").read_text().count("SIL OPEN FONT LICENSE Version 1.1") == 1
    assert "Bitstream" in (scenes.FONT_DIR / "LICENSE-DejaVu.txt").read_text()
    total = sum(p.stat().st_size for p in scenes.FONT_DIR.glob("*.[ot]tf"))
    assert total < 400_000  # subsets, not whole CJK fonts


def test_chinese_scenes_draw_real_glyphs_without_system_fonts(no_system_fonts):
    f = scenes.font("cjk", 32)
    # A font without the glyphs draws the same empty box for every character.
    assert bytes(f.getmask("中")) != bytes(f.getmask("文"))
    for line in scenes.ZH_LINES + scenes.MIXED_LINES:
        img = scenes.text_line(line, font_name="cjk", size=32)
        assert img.width > 20 * len(line.replace(" ", "")) * 0.5
    assert scenes.receipt().image.size[0] == 560
    assert {s.lang for s in scenes.ocr_corpus()} == {"en", "zh", "mixed"}


def test_a_character_outside_the_subset_is_a_clear_error():
    rare = chr(0x9F98)  # not written literally: make_fonts.py adds every character found in tests/*.py
    with pytest.raises(ValueError, match=rf"font 'cjk' \(NotoSansCJKsc-Regular-subset\.otf\) lacks '{rare}'"):
        scenes.text_line(rare, font_name="cjk")
    coverage = json.loads((scenes.FONT_DIR / "coverage.json").read_text(encoding="utf-8"))
    assert set("请勿在此处停车星光咖啡") <= set(coverage["NotoSansCJKsc-Regular-subset.otf"])


def test_ocr_reads_chinese_drawn_without_system_fonts(no_system_fonts):
    from experts import ocr_engines

    if not ocr_engines.onnx_installed():
        pytest.skip("onnx OCR engine needs the [onnx] extra (rapidocr, onnxruntime)")
    from experts.ocr import OcrExpert

    img = scenes.text_line("请勿在此处停车", font_name="cjk", size=36)
    r = OcrExpert(engine="onnx").analyze(decode_image(scenes.png_bytes(img)), {})
    assert r.full_text == "请勿在此处停车"

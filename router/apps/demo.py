"""The embedded default: a product shot made for this repo (text, shapes and a logo).

``router/data/demo.png`` is committed; ``python -m router.apps.demo`` regenerates it (fonts: DejaVu and,
for the Chinese line, WenQuanYi Zen Hei from Debian's fonts-wqy-zenhei).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_QUESTION = "What product is this, what does the label say, and how big is the box in the picture?"


def demo_image_bytes() -> bytes:
    """The committed demo PNG."""
    return resources.files("router").joinpath("data/demo.png").read_bytes()


def _font(size: int, cjk: bool = False):
    from PIL import ImageFont

    paths = (
        ["/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"]
        if cjk
        else ["/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
    )
    for p in paths:
        if Path(p).exists():
            return ImageFont.truetype(p, size)
    return ImageFont.load_default(size=size)


def render_demo_image():
    """Draw the demo scene: a tea box with a brand, a Chinese line, a price tag and a round logo."""
    from PIL import Image, ImageDraw

    w, h = 960, 640
    img = Image.new("RGB", (w, h), (244, 241, 234))
    d = ImageDraw.Draw(img)
    # soft floor shadow and the product box
    d.rectangle([300, 520, 700, 540], fill=(220, 216, 206))
    d.rectangle([320, 120, 680, 520], fill=(46, 102, 76))
    d.rectangle([340, 140, 660, 500], outline=(230, 200, 120), width=4)
    d.text((500, 200), "AURORA", font=_font(64), fill=(250, 245, 230), anchor="mm")
    d.text((500, 270), "GREEN TEA", font=_font(40), fill=(230, 200, 120), anchor="mm")
    d.text((500, 340), "有机绿茶", font=_font(44, cjk=True), fill=(250, 245, 230), anchor="mm")
    d.text((500, 440), "20 TEA BAGS  40g", font=_font(28), fill=(250, 245, 230), anchor="mm")
    # round logo, top left
    d.ellipse([60, 60, 200, 200], fill=(200, 60, 50))
    d.text((130, 130), "A", font=_font(80), fill=(255, 255, 255), anchor="mm")
    # price tag, right
    d.rectangle([740, 420, 900, 500], fill=(255, 255, 255), outline=(30, 30, 30), width=3)
    d.text((820, 460), "$12.99", font=_font(36), fill=(20, 20, 20), anchor="mm")
    return img


if __name__ == "__main__":  # pragma: no cover - maintenance helper
    out = Path(__file__).parents[1] / "data" / "demo.png"
    render_demo_image().save(out, optimize=True)
    print(f"wrote {out}")

"""Test images made in-process: text for the OCR expert, drawn shapes and codes for the detect expert.

Nothing here is downloaded. Every generator is deterministic (seeded) and returns the image together
with what a correct expert must find in it, so tests compare against known truth:

- text: :func:`text_line`, :func:`text_block`, :func:`receipt`, :func:`product_photo`, and
  :func:`ocr_corpus` (the accuracy corpus: en + zh, several fonts, sizes, rotations, backgrounds).
- shapes: :func:`shapes_scene` (any list of :class:`Shape`) and :func:`standard_shapes` (a fixed
  scene with known counts, sizes and ratios, optionally under uneven lighting and noise).
- codes: :func:`qr_code` (OpenCV's QR encoder) and :func:`ean13_barcode` (drawn from the EAN-13 tables).
- helpers: :func:`png_bytes` / :func:`jpeg_bytes` to feed ``experts.images.decode_image``.

Fonts ship with the tests (``tests/data/fonts``: subsets of DejaVu for Latin and Noto Sans CJK SC for
Chinese, with their licences), so scenes look the same on every machine and need no system font. A
character the subsets lack is an error naming it; ``tests/data/fonts/make_fonts.py`` adds it.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path(__file__).resolve().parent / "data" / "fonts"
FONTS: dict[str, str] = {
    "sans": str(FONT_DIR / "DejaVuSans-subset.ttf"),
    "sans-bold": str(FONT_DIR / "DejaVuSans-Bold-subset.ttf"),
    "serif": str(FONT_DIR / "DejaVuSerif-subset.ttf"),
    "mono": str(FONT_DIR / "DejaVuSansMono-subset.ttf"),
    "cond": str(FONT_DIR / "DejaVuSansCondensed-subset.ttf"),
    "cjk": str(FONT_DIR / "NotoSansCJKsc-Regular-subset.otf"),
}
"""Font name -> file, all shipped in ``tests/data/fonts``. ``cjk`` covers Chinese and Latin; the others
are Latin (and Latin-1) only."""


def font_available(name: str) -> bool:
    """Whether the font file for ``name`` (a key of :data:`FONTS`) is there."""
    return os.path.exists(FONTS[name])


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """Load a font from :data:`FONTS` at a pixel size."""
    return ImageFont.truetype(FONTS[name], size)


@cache
def _coverage() -> dict[str, frozenset[str]]:
    raw = json.loads((FONT_DIR / "coverage.json").read_text(encoding="utf-8"))
    return {name: frozenset(chars) for name, chars in raw.items()}


def check_coverage(font_name: str, text: str) -> None:
    """Raise :class:`ValueError` naming any character of ``text`` the font cannot draw (a subset draws
    an empty box for it, which would silently change what OCR tests see)."""
    covered = _coverage().get(Path(FONTS[font_name]).name)
    if covered is None:  # a font a test put in FONTS itself
        return
    missing = sorted({c for c in text if c not in covered and not c.isspace()})
    if missing:
        raise ValueError(
            f"font {font_name!r} ({Path(FONTS[font_name]).name}) lacks {''.join(missing)!r}: "
            "run tests/data/fonts/make_fonts.py to add them"
        )


# --- backgrounds ---------------------------------------------------------------------------------
def background(
    width: int,
    height: int,
    kind: str = "white",
    seed: int = 0,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """A background: ``white`` (plain ``colour``), ``paper`` (warm, slight grain), ``gradient``
    (uneven lighting: bright corner to dim corner), ``noise`` (gradient plus Gaussian noise and blotches)."""
    if kind == "white":
        return Image.new("RGB", (width, height), colour)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(colour, dtype=np.float32)
    if kind == "paper":
        arr = np.broadcast_to(np.array([246, 240, 226], np.float32), (height, width, 3)).copy()
        arr += rng.normal(0, 4, (height, width, 1))
    elif kind in ("gradient", "noise"):
        # Light falls off from the top-left corner: about 45% darker at the far corner.
        light = 1.0 - 0.45 * (xx / max(width - 1, 1) * 0.6 + yy / max(height - 1, 1) * 0.4)
        arr = base[None, None, :] * light[:, :, None]
        if kind == "noise":
            arr += rng.normal(0, 10, (height, width, 1))
            for _ in range(6):  # soft stains
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
                r = rng.uniform(0.05, 0.2) * max(width, height)
                arr -= 18 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[:, :, None]
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# --- text ----------------------------------------------------------------------------------------
@dataclass
class TextSample:
    """One OCR test image and its ground truth (lines top to bottom)."""

    name: str
    image: Image.Image
    lines: list[str]
    lang: str  # "en", "zh" or "mixed"
    tags: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def text_line(
    text: str,
    *,
    font_name: str = "sans",
    size: int = 32,
    angle: float = 0.0,
    bg: str = "white",
    fg: tuple[int, int, int] = (20, 20, 20),
    pad: int | None = None,
    seed: int = 0,
) -> Image.Image:
    """One line of text, optionally rotated by ``angle`` degrees (counter-clockwise) on a background."""
    return text_block([text], font_name=font_name, size=size, angle=angle, bg=bg, fg=fg, pad=pad, seed=seed)


def text_block(
    lines: list[str],
    *,
    font_name: str = "sans",
    size: int = 32,
    angle: float = 0.0,
    bg: str = "white",
    fg: tuple[int, int, int] = (20, 20, 20),
    pad: int | None = None,
    line_gap: float = 0.6,
    seed: int = 0,
) -> Image.Image:
    """Several left-aligned lines (``line_gap`` is the blank space between lines, in font sizes)."""
    check_coverage(font_name, "".join(lines))
    f = font(font_name, size)
    pad = pad if pad is not None else max(16, size)
    widths = [int(f.getlength(t)) for t in lines]
    step = int(size * (1.0 + line_gap))
    w = max(widths) + 2 * pad
    h = step * len(lines) - int(size * line_gap) + 2 * pad
    # Draw on a transparent layer so rotation does not drag a white rectangle over the background.
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    for i, t in enumerate(lines):
        d.text((pad, pad + i * step), t, font=f, fill=(*fg, 255))
    if angle:
        layer = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
    canvas = background(layer.width, layer.height, bg, seed=seed)
    canvas.paste(layer, (0, 0), layer)
    return canvas


def receipt(seed: int = 0) -> TextSample:
    """A till receipt: shop name (zh + en), items with right-aligned prices, a total, on paper."""
    items = [("Latte", "4.50"), ("Croissant", "3.20"), ("Orange juice", "3.80"), ("拿铁咖啡", "28.00")]
    header = ["星光咖啡 STARLIGHT CAFE", "No. 12 Garden Road"]
    footer = ["TOTAL 39.50", "谢谢惠顾 Thank you"]
    f_big, f = font("cjk", 30), font("cjk", 24)
    w, margin = 560, 36
    img = background(w, 520, "paper", seed=seed)
    d = ImageDraw.Draw(img)
    y = margin
    expected: list[str] = []
    for t in header:
        fx = f_big if t is header[0] else f
        d.text(((w - fx.getlength(t)) / 2, y), t, font=fx, fill=(30, 30, 30))
        expected.append(t)
        y += 48
    d.line([(margin, y), (w - margin, y)], fill=(120, 120, 120), width=2)
    y += 22
    for name, price in items:
        d.text((margin, y), name, font=f, fill=(25, 25, 25))
        d.text((w - margin - f.getlength(price), y), price, font=f, fill=(25, 25, 25))
        expected.append(f"{name} {price}")
        y += 44
    d.line([(margin, y), (w - margin, y)], fill=(120, 120, 120), width=2)
    y += 22
    for t in footer:
        d.text((margin, y), t, font=f, fill=(25, 25, 25))
        expected.append(t)
        y += 44
    return TextSample("receipt", img.crop((0, 0, w, y + margin)), expected, "mixed", ("receipt",))


def product_photo(seed: int = 0) -> TextSample:
    """A product shot: a can on a gradient backdrop with a brand logo, a slogan, and a faint diagonal
    watermark over the picture. Ground truth lists the legible text (brand, flavour, slogan, watermark)."""
    w, h = 720, 540
    img = background(w, h, "gradient", seed=seed, colour=(200, 215, 235))
    d = ImageDraw.Draw(img)
    # The can: a rounded rectangle with a highlight stripe.
    d.rounded_rectangle([250, 80, 470, 470], radius=40, fill=(180, 30, 40), outline=(120, 20, 25), width=4)
    d.rectangle([265, 100, 285, 450], fill=(215, 80, 90))
    # Logo: a white circle emblem and the brand name.
    d.ellipse([320, 120, 400, 200], fill=(250, 250, 250))
    d.ellipse([340, 140, 380, 180], fill=(180, 30, 40))
    brand, flavour, slogan = "NOVA", "CHERRY", "Fresh taste every day"
    fb, ff, fs = font("sans-bold", 52), font("sans-bold", 28), font("serif", 26)
    d.text((360 - fb.getlength(brand) / 2, 220), brand, font=fb, fill=(255, 255, 255))
    d.text((360 - ff.getlength(flavour) / 2, 300), flavour, font=ff, fill=(255, 236, 150))
    d.text(((w - fs.getlength(slogan)) / 2, 488), slogan, font=fs, fill=(30, 30, 60))
    # Watermark: semi-transparent grey text across the lower left.
    mark = "SAMPLE PHOTO"
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ld = ImageDraw.Draw(layer)
    ld.text((24, 440), mark, font=font("sans-bold", 34), fill=(255, 255, 255, 150))
    layer = layer.rotate(12, resample=Image.BICUBIC, center=(24, 460))
    img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    return TextSample("product", img, [brand, flavour, mark, slogan], "en", ("product", "watermark"))


EN_LINES = [
    "The quick brown fox jumps over the lazy dog",
    "Invoice 2024-0317 due on 15 April",
    "Open daily from 9am to 6pm",
    "Keep this door closed at all times",
]
ZH_LINES = [
    "欢迎光临本店",
    "今天天气很好，我们去公园散步",
    "请勿在此处停车",
    "营业时间：上午九点至下午六点",
]
MIXED_LINES = ["价格 Price 128 元", "会议室 Room 3B 下午2点"]


def ocr_corpus() -> list[TextSample]:
    """The OCR accuracy corpus: English and Chinese lines in several fonts and sizes, rotated a few
    degrees, on plain, paper, uneven and noisy backgrounds, plus :func:`receipt` and :func:`product_photo`.
    About 20 small images; each sample's ``tags`` say what makes it hard."""
    out: list[TextSample] = []
    en_fonts = ["sans", "serif", "mono", "sans-bold"]
    bgs = ["white", "paper", "gradient", "noise"]
    for i, line in enumerate(EN_LINES):
        fn, bg = en_fonts[i % 4], bgs[i % 4]
        size = (22, 28, 36, 30)[i]
        angle = (0.0, 3.0, -4.0, 2.0)[i]
        out.append(
            TextSample(
                f"en{i}-{fn}-{size}px-{bg}",
                text_line(line, font_name=fn, size=size, angle=angle, bg=bg, seed=i),
                [line],
                "en",
                (fn, bg, f"rot{angle:g}"),
            )
        )
    for i, line in enumerate(ZH_LINES):
        bg, size = bgs[(i + 1) % 4], (26, 34, 40, 30)[i]
        angle = (0.0, -3.0, 4.0, 0.0)[i]
        out.append(
            TextSample(
                f"zh{i}-cjk-{size}px-{bg}",
                text_line(line, font_name="cjk", size=size, angle=angle, bg=bg, seed=10 + i),
                [line],
                "zh",
                ("cjk", bg, f"rot{angle:g}"),
            )
        )
    for i, line in enumerate(MIXED_LINES):
        out.append(
            TextSample(
                f"mixed{i}",
                text_line(line, font_name="cjk", size=32, bg="paper", seed=20 + i),
                [line],
                "mixed",
                ("cjk", "paper"),
            )
        )
    para = ["Meeting notes for Monday", "Budget review at 10:30", "Bring the signed forms"]
    out.append(
        TextSample(
            "en-paragraph",
            text_block(para, font_name="serif", size=26, bg="white"),
            para,
            "en",
            ("serif", "multiline"),
        )
    )
    out.append(receipt())
    out.append(product_photo())
    return out


# --- shapes --------------------------------------------------------------------------------------
@dataclass
class Shape:
    """A filled shape to draw: ``kind`` is rectangle, square, circle, ellipse or triangle; ``box`` is its
    axis-aligned bounding box [x1, y1, x2, y2] (exclusive x2/y2); ``colour`` an RGB triple with a name."""

    kind: str
    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]
    colour_name: str

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        """Geometric area of the ideal shape in pixels (see :meth:`drawn_area` for the rasterised one)."""
        w, h = self.width, self.height
        if self.kind in ("circle", "ellipse"):
            return math.pi * w * h / 4
        if self.kind == "triangle":
            return w * h / 2
        return float(w * h)

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def centroid(self) -> tuple[float, float]:
        """Centre of mass (a triangle's sits a third of the way up from its base)."""
        if self.kind == "triangle":
            return ((self.box[0] + self.box[2]) / 2, self.box[1] + 2 * self.height / 3)
        return self.centre

    def drawn_area(self) -> int:
        """Pixels this shape covers as :func:`shapes_scene` rasterises it (the truth for pixel areas)."""
        mask = Image.new("L", (self.box[2] + 2, self.box[3] + 2), 0)
        _draw_shape(ImageDraw.Draw(mask), self, 255)
        return int((np.asarray(mask) > 0).sum())


def _draw_shape(d: ImageDraw.ImageDraw, s: Shape, fill) -> None:
    x1, y1, x2, y2 = s.box
    if s.kind in ("rectangle", "square"):
        d.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
    elif s.kind in ("circle", "ellipse"):
        d.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
    elif s.kind == "triangle":
        d.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {s.kind!r}")


@dataclass
class ShapeScene:
    """A drawn scene and its truth."""

    image: Image.Image
    shapes: list[Shape] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Shapes per kind."""
        out: dict[str, int] = {}
        for s in self.shapes:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out


COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (235, 200, 40),
    "black": (25, 25, 25),
    "orange": (240, 130, 30),
    "purple": (130, 50, 170),
}


def shapes_scene(
    shapes: list[Shape],
    size: tuple[int, int] = (800, 600),
    bg: str = "white",
    bg_colour: tuple[int, int, int] = (245, 245, 245),
    seed: int = 0,
    specks: int = 0,
) -> ShapeScene:
    """Draw ``shapes`` on a background. ``specks`` adds that many tiny (2-3 px) dark dots: noise that an
    expert must not count as objects."""
    img = background(size[0], size[1], bg, seed=seed, colour=bg_colour)
    d = ImageDraw.Draw(img)
    for s in shapes:
        _draw_shape(d, s, s.colour)
    if specks:
        rng = np.random.default_rng(seed + 1)
        for _ in range(specks):
            x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
            r = int(rng.integers(1, 3))
            d.ellipse([x - r, y - r, x + r, y + r], fill=(60, 60, 60))
    return ShapeScene(img, list(shapes))


def standard_shapes(bg: str = "white", specks: int = 0, seed: int = 0) -> ShapeScene:
    """The reference scene (800x600): 3 rectangles, 1 square, 2 circles and 1 triangle.

    The largest object is the 240x160 red rectangle (area 38400 px, 8% of the image), exactly twice the
    area of the 160x120 blue rectangle (19200 px); the green circle is 120 px across."""
    c = COLOURS
    shapes = [
        Shape("rectangle", (60, 60, 300, 220), c["red"], "red"),
        Shape("rectangle", (380, 80, 540, 200), c["blue"], "blue"),
        Shape("rectangle", (600, 60, 760, 120), c["black"], "black"),
        Shape("square", (600, 200, 700, 300), c["yellow"], "yellow"),
        Shape("circle", (80, 320, 200, 440), c["green"], "green"),
        Shape("circle", (300, 360, 380, 440), c["orange"], "orange"),
        Shape("triangle", (480, 340, 660, 520), c["purple"], "purple"),
    ]
    return shapes_scene(shapes, bg=bg, specks=specks, seed=seed)


# --- codes ---------------------------------------------------------------------------------------
def qr_code(
    payload: str,
    module_px: int = 8,
    border_px: int = 40,
    canvas: tuple[int, int] | None = None,
    at: tuple[int, int] = (0, 0),
) -> Image.Image:
    """A QR code for ``payload`` made with ``cv2.QRCodeEncoder``; optionally pasted at ``at`` on a white
    ``canvas`` of the given size."""
    import cv2

    small = cv2.QRCodeEncoder.create().encode(payload)  # 1 px per module, with quiet zone
    big = cv2.resize(small, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    big = cv2.copyMakeBorder(big, border_px, border_px, border_px, border_px, cv2.BORDER_CONSTANT, value=255)
    img = Image.fromarray(big).convert("RGB")
    if canvas is None:
        return img
    out = Image.new("RGB", canvas, (255, 255, 255))
    out.paste(img, at)
    return out


_EAN_L = [
    "0001101",
    "0011001",
    "0010011",
    "0111101",
    "0100011",
    "0110001",
    "0101111",
    "0111011",
    "0110111",
    "0001011",
]
_EAN_G = [
    "0100111",
    "0110011",
    "0011011",
    "0100001",
    "0011101",
    "0111001",
    "0000101",
    "0010001",
    "0001001",
    "0010111",
]
_EAN_R = [
    "1110010",
    "1100110",
    "1101100",
    "1000010",
    "1011100",
    "1001110",
    "1010000",
    "1000100",
    "1001000",
    "1110100",
]
_EAN_PARITY = [
    "LLLLLL",
    "LLGLGG",
    "LLGGLG",
    "LLGGGL",
    "LGLLGG",
    "LGGLLG",
    "LGGGLL",
    "LGLGLG",
    "LGLGGL",
    "LGGLGL",
]


def ean13_checksum(digits12: str) -> str:
    """The EAN-13 check digit for 12 digits."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits12))
    return str((10 - total % 10) % 10)


def ean13_barcode(digits12: str = "400638133393", module_px: int = 3, height: int = 160) -> tuple[Image.Image, str]:
    """An EAN-13 barcode drawn from the standard tables. Returns the image and the full 13-digit code."""
    code = digits12 + ean13_checksum(digits12)
    first, left, right = int(code[0]), code[1:7], code[7:]
    bits = "101"
    for d, p in zip(left, _EAN_PARITY[first], strict=False):
        bits += (_EAN_L if p == "L" else _EAN_G)[int(d)]
    bits += "01010"
    for d in right:
        bits += _EAN_R[int(d)]
    bits += "101"
    quiet = 12 * module_px
    w = len(bits) * module_px + 2 * quiet
    img = Image.new("RGB", (w, height + 2 * quiet), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i, b in enumerate(bits):
        if b == "1":
            x = quiet + i * module_px
            d.rectangle([x, quiet, x + module_px - 1, quiet + height - 1], fill=(0, 0, 0))
    return img, code


# --- encoding ------------------------------------------------------------------------------------
def png_bytes(img: Image.Image, dpi: tuple[int, int] | None = None) -> bytes:
    """PNG-encode an image, optionally recording a DPI in the file."""
    buf = io.BytesIO()
    if dpi:
        img.save(buf, format="PNG", dpi=dpi)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    """JPEG-encode an image."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def blur(img: Image.Image, radius: float = 1.0) -> Image.Image:
    """A slightly out-of-focus copy of an image."""
    return img.filter(ImageFilter.GaussianBlur(radius))

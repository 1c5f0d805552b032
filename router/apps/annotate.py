"""Draw what the experts found on the image: labelled boxes for ``detect``, text quads with the
recognised text for ``ocr``, and a strip under the image for the caption, styles and errors.

Legible at any size: line widths and the font scale with the image, images smaller than
:data:`MIN_SIDE` are enlarged first and larger than :data:`MAX_SIDE` reduced, every label sits on a
solid background and inside the picture. Chinese text needs a CJK font: :func:`find_font` looks for
one (``VISION_ROUTER_FONT``, fontconfig, well-known paths) before falling back to DejaVu and then to
Pillow's built-in font; :attr:`Annotated.font` says which was used.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from experts.errors import VisionRouterError
from experts.images import DecodedImage
from experts.schema import ImageAnalysis

log = logging.getLogger(__name__)

MIN_SIDE = 480  # smaller images are enlarged so labels stay readable
MAX_SIDE = 2048  # larger ones are reduced: an annotation is for looking at, not for measuring
OCR_COLOUR = (255, 145, 0)
# Distinct colours for detection labels (a label keeps its colour across images).
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (145, 30, 180),
    (240, 50, 230),
    (0, 128, 128),
    (128, 128, 0),
    (170, 110, 40),
    (0, 0, 128),
    (128, 0, 0),
]
HALO = (255, 255, 255)
STRIP_BG = (30, 30, 30)
STRIP_FG = (240, 240, 240)
STRIP_KEY = (255, 190, 80)

# CJK fonts by preference (Linux packages, macOS, Windows); any of them also covers Latin.
CJK_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-zenhei/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)
LATIN_FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Helvetica.ttc",
    "C:/Windows/Fonts/arial.ttf",
)
PILLOW_DEFAULT = "Pillow default"


@dataclass
class Annotated:
    """An annotation: the picture, its scale against the original, and the font it used."""

    image: Image.Image
    scale: float  # annotation pixels per original pixel
    font: str  # font file, or "Pillow default"
    strip_height: int = 0  # rows of the caption/style strip under the picture
    labels: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)  # text, rect


# --- fonts ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def find_font() -> str:
    """The font file to draw with: CJK-capable when one can be found, else DejaVu/Arial, else
    ``"Pillow default"``."""
    env = os.environ.get("VISION_ROUTER_FONT")
    if env:
        if Path(env).is_file():
            return env
        log.warning("VISION_ROUTER_FONT=%s is not a file; looking for a font instead", env)
    for p in _fontconfig_cjk() + list(CJK_FONT_PATHS) + list(LATIN_FONT_PATHS):
        if Path(p).is_file():
            return p
    sans = _fc_match("sans")
    if sans:
        return sans
    return PILLOW_DEFAULT


@functools.lru_cache(maxsize=16)
def font_has_cjk(font: str) -> bool:
    """Whether the font file draws Chinese: real glyphs differ, a font without them draws the same
    empty box for every character (a name check would miss a font given by VISION_ROUTER_FONT)."""
    if font == PILLOW_DEFAULT:
        return False
    try:
        f = ImageFont.truetype(font, 24)
        return bytes(f.getmask("中")) != bytes(f.getmask("文"))
    except OSError:
        return False


def _fontconfig_cjk() -> list[str]:
    """Fonts fontconfig says cover Chinese, regular weights first."""
    files = _fc_cached("fc-list", ":lang=zh", "file")
    paths = [f.strip().rstrip(":").strip() for f in files.splitlines() if f.strip()]
    paths = [p for p in paths if p.lower().endswith((".ttf", ".ttc", ".otf"))]
    return sorted(paths, key=lambda p: (any(w in p.lower() for w in ("bold", "black", "heavy", "mono")), p))


def _fc_match(pattern: str) -> str | None:
    out = _fc_cached("fc-match", "-f", "%{file}", pattern).strip()
    return out if out and Path(out).is_file() else None


@functools.lru_cache(maxsize=8)
def _fc_cached(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=32)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path == PILLOW_DEFAULT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


# --- drawing --------------------------------------------------------------------------------------
def render(image: DecodedImage | Image.Image, analysis: ImageAnalysis, *, font_path: str | None = None) -> Annotated:
    """Draw ``analysis`` on ``image`` and return the picture (not saved)."""
    src = image.image if isinstance(image, DecodedImage) else image
    src = src.convert("RGB")
    w0, h0 = src.size
    longest = max(w0, h0)
    scale = 1.0
    if longest < MIN_SIDE:
        scale = MIN_SIDE / longest
    elif longest > MAX_SIDE:
        scale = MAX_SIDE / longest
    if scale != 1.0:
        size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        src = src.resize(size, Image.Resampling.LANCZOS)
    w, h = src.size
    font_file = font_path or find_font()
    longest = max(w, h)
    font_px = max(13, min(64, round(longest * 0.021)))
    line_w = max(2, round(longest / 320))
    pad = max(2, font_px // 5)
    font = _load_font(font_file, font_px)
    _warn_missing_cjk(analysis, font_file)

    strip_lines = _strip_lines(analysis)
    strip_font = _load_font(font_file, max(13, round(font_px * 0.9)))
    wrapped: list[tuple[str, str]] = []
    for key, text in strip_lines:
        for i, part in enumerate(_wrap(f"{key}: {text}", strip_font, w - 2 * pad, max_lines=3)):
            wrapped.append((key if i == 0 else "", part))
    line_h = _text_size(strip_font, "Ag中")[1] + pad
    strip_h = (len(wrapped) * line_h + 2 * pad) if wrapped else 0

    canvas = Image.new("RGB", (w, h + strip_h), STRIP_BG)
    canvas.paste(src, (0, 0))
    draw = ImageDraw.Draw(canvas)
    taken: list[tuple[float, float, float, float]] = []
    labels: list[tuple[str, tuple[float, float, float, float]]] = []

    for t in analysis.text:
        quad = _quad(t.box, t.bbox)
        if quad is None:
            continue
        pts = [(_clamp(x * scale, 0, w - 1), _clamp(y * scale, 0, h - 1)) for x, y in quad]
        draw.line([*pts, pts[0]], fill=HALO, width=line_w + 2, joint="curve")
        draw.line([*pts, pts[0]], fill=OCR_COLOUR, width=line_w, joint="curve")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        label = f"{t.text} {t.score:.2f}" if t.score is not None else t.text
        labels.append(_label(draw, (min(xs), min(ys), max(xs), max(ys)), label, OCR_COLOUR, font, pad, (w, h), taken))

    for b in analysis.bbox:
        x1, x2 = sorted((b.x1 * scale, b.x2 * scale))
        y1, y2 = sorted((b.y1 * scale, b.y2 * scale))
        box = (_clamp(x1, 0, w - 1), _clamp(y1, 0, h - 1), _clamp(x2, 0, w - 1), _clamp(y2, 0, h - 1))
        colour = label_colour(b.label)
        # A light halo keeps a box visible on dark or same-coloured backgrounds.
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), outline=HALO, width=line_w + 2)
        draw.rectangle(box, outline=colour, width=line_w)
        label = f"{b.label} {b.score:.2f}" if b.score is not None else b.label
        labels.append(_label(draw, box, label, colour, font, pad, (w, h), taken))

    y = h + pad
    for key, part in wrapped:
        x = pad
        if key:
            head = f"{key}:"
            draw.text((x, y), head, font=strip_font, fill=STRIP_KEY)
            x += strip_font.getlength(head)
            part = part[len(head) :]
        draw.text((x, y), part, font=strip_font, fill=STRIP_FG)
        y += line_h
    return Annotated(canvas, scale, font_file, strip_h, labels)


def annotate(image: DecodedImage, analysis: ImageAnalysis, out_path: Path) -> Path:
    """Write ``image`` with what the experts found drawn on it to ``out_path`` (PNG unless the suffix
    names another format Pillow writes). Returns the path written."""
    out = Path(out_path)
    result = render(image, analysis)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if out.suffix.lower() in ("", ".png") else None
        if fmt == "PNG":
            result.image.save(out, "PNG", optimize=True)
        else:
            result.image.save(out)
    except (OSError, ValueError, KeyError) as exc:
        raise VisionRouterError(f"cannot write annotation {out}: {exc}") from None
    log.info("annotated %s (font: %s, scale %.2f)", out, result.font, result.scale)
    return out


def label_colour(label: str) -> tuple[int, int, int]:
    """A stable colour per label."""
    return PALETTE[zlib.crc32(label.lower().encode("utf-8")) % len(PALETTE)]


def _label(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    text: str,
    colour: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    pad: int,
    size: tuple[int, int],
    taken: list[tuple[float, float, float, float]],
) -> tuple[str, tuple[float, float, float, float]]:
    """Draw a label on a solid background next to ``box``: above it, else below, else inside; never
    outside the picture and, where there is room, not over an earlier label."""
    w, h = size
    text = _fit(text, font, w - 2 * pad)
    tw, th = _text_size(font, text)
    lw, lh = tw + 2 * pad, th + 2 * pad
    x1, y1, x2, y2 = box
    spots = [(x1, y1 - lh), (x1, y2), (x1, y1), (x2 - lw, y1 - lh), (x2 - lw, y2)]
    chosen = None
    for sx, sy in spots:
        sx, sy = _clamp(sx, 0, max(0, w - lw)), _clamp(sy, 0, max(0, h - lh))
        rect = (sx, sy, sx + lw - 1, sy + lh - 1)  # inclusive, as Pillow draws it
        if chosen is None:
            chosen = rect
        if not any(_overlap(rect, t) for t in taken):
            chosen = rect
            break
    assert chosen is not None
    taken.append(chosen)
    draw.rectangle(chosen, fill=colour)
    fg = (0, 0, 0) if _luma(colour) > 150 else (255, 255, 255)
    left, top = _text_offset(font, text)
    draw.text((chosen[0] + pad - left, chosen[1] + pad - top), text, font=font, fill=fg)
    return text, chosen


def _strip_lines(a: ImageAnalysis) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    if a.caption:
        lines.append(("caption", a.caption))
    if a.styles:
        parts = [f"{s.name}{'/' + s.name_zh if s.name_zh else ''} {s.score:.2f}" for s in a.styles[:6]]
        lines.append(("style", " · ".join(parts)))
    drawn = {b.label for b in a.bbox}
    objects = [o for o in a.objects if o not in drawn]
    if objects and not a.bbox:
        lines.append(("objects", ", ".join(objects[:12])))
    for key, err in a.errors.items():
        lines.append(("error", f"{key}: {err}"))
    return lines


def _quad(box: list[list[float]], bbox: list[float]) -> list[tuple[float, float]] | None:
    if len(box) >= 4 and all(len(p) >= 2 for p in box):
        return [(float(p[0]), float(p[1])) for p in box[:4]]
    if len(bbox) == 4:
        x1, y1, x2, y2 = (float(v) for v in bbox)
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return None


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float, max_lines: int) -> list[str]:
    """Greedy wrap by pixel width; breaks at spaces where it can, anywhere in CJK text."""
    lines: list[str] = []
    rest = " ".join(text.split())
    while rest and len(lines) < max_lines:
        if font.getlength(rest) <= width:
            lines.append(rest)
            rest = ""
            break
        cut = 1
        while cut < len(rest) and font.getlength(rest[: cut + 1]) <= width:
            cut += 1
        space = rest.rfind(" ", 0, cut + 1)
        if space > cut // 2:
            cut = space
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest and lines:
        lines[-1] = _fit(lines[-1] + " " + rest, font, width)
    return lines


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _text_size(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    # Height from the font's full line (ascent + descent) so labels in a row line up.
    try:
        ascent, descent = font.getmetrics()  # type: ignore[union-attr]
        return int(right - left + 0.5), int(ascent + descent - top)
    except AttributeError:
        return int(right - left + 0.5), int(bottom - top)


def _text_offset(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple[float, float]:
    left, top, _, _ = font.getbbox(text or " ")
    return left, top


def _warn_missing_cjk(a: ImageAnalysis, font_file: str) -> None:
    texts = [t.text for t in a.text] + [b.label for b in a.bbox] + [a.caption or ""]
    if any(_is_cjk(c) for s in texts for c in s) and not font_has_cjk(font_file):
        log.warning(
            "no CJK font found (used %s): Chinese text may show as boxes; install fonts-wqy-zenhei "
            "or set VISION_ROUTER_FONT",
            font_file,
        )


def _is_cjk(c: str) -> bool:
    return "\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uf900" <= c <= "\ufaff"


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]

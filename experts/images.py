"""Image intake: every attached image is checked and decoded once, then shared by all experts.

Limits are enforced before any pixel is decoded, so a tiny 20000x20000 PNG "bomb" is refused from
its header alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from experts.errors import ImageError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
# Pillow format names we accept (the JPEG opener also reads the multi-picture MPO files phones write).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

# We do our own pixel check before decoding; Pillow's bomb guard would only add a second, looser one.
Image.MAX_IMAGE_PIXELS = None


@dataclass(eq=False)
class DecodedImage:
    """An accepted image: original bytes, their sha256 ``image_id`` and the RGB pixels."""

    image_id: str
    data: bytes = field(repr=False)
    image: Image.Image = field(repr=False)
    format: str
    source: str | None = None
    dpi: tuple[float, float] | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB array, computed once and shared (treat it as read-only)."""
        return self._array("rgb")

    def bgr(self) -> np.ndarray:
        """HxWx3 uint8 BGR array for OpenCV, computed once and shared (treat it as read-only)."""
        return self._array("bgr")

    def _array(self, kind: str) -> np.ndarray:
        with self._lock:
            arr = self._arrays.get(kind)
            if arr is None:
                rgb = self._arrays.get("rgb")
                if rgb is None:
                    rgb = np.asarray(self.image)
                    rgb.setflags(write=False)
                    self._arrays["rgb"] = rgb
                if kind == "bgr":
                    arr = np.ascontiguousarray(rgb[:, :, ::-1])
                    arr.setflags(write=False)
                    self._arrays["bgr"] = arr
                else:
                    arr = rgb
            return arr

    def describe(self) -> dict[str, Any]:
        """Size and format, for the model's note about what is attached."""
        return {"image_id": self.image_id, "width": self.width, "height": self.height, "format": self.format}


def image_id_of(data: bytes) -> str:
    """The content address of an image: sha256 of its original bytes."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes,
    *,
    source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Check and decode one image. Raises :class:`ImageError` with one clear line on any problem."""
    name = f"{source}: " if source else ""
    if not data:
        raise ImageError(f"{name}empty image (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{name}image is {_mib(len(data))}, over the {_mib(max_bytes)} limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}not a supported image (accepted: PNG, JPEG, WebP, GIF, BMP, TIFF)"
        ) from None
    except Exception as exc:  # Pillow raises many types on corrupt headers
        raise ImageError(f"{name}unreadable image header: {exc}") from None
    fmt = img.format or "unknown"
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{name}image is {w}x{h} = {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:.0f} MP limit"
        )
    try:
        img.seek(0)  # GIF/TIFF: first frame
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = _to_rgb(img)
    except Exception as exc:
        raise ImageError(f"{name}truncated or corrupt {fmt} image: {exc}") from None
    dpi = img.info.get("dpi")
    dpi_t = (float(dpi[0]), float(dpi[1])) if isinstance(dpi, tuple) and len(dpi) == 2 else None
    return DecodedImage(
        image_id=image_id_of(data), data=data, image=rgb, format=fmt, source=source, dpi=dpi_t
    )


def decode_base64_image(b64: str, *, index: int | None = None, **limits: Any) -> DecodedImage:
    """Decode a bare base64 image (Ollama's ``images`` field); ``data:`` URLs are accepted too."""
    label = f"image {index}" if index is not None else "image"
    s = b64.strip()
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise ImageError(f"{label}: data URL is not base64-encoded")
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{label}: illegal base64 data") from None
    return decode_image(data, source=label, **limits)


def load_image_file(path: str | Path, **limits: Any) -> DecodedImage:
    """Read and decode an image file named by the user (never a path taken from model or expert text)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{p}: {exc.strerror or exc}") from None
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    max_bytes = limits.get("max_bytes", DEFAULT_MAX_BYTES)
    if size > max_bytes:
        raise ImageError(f"{p}: image is {_mib(size)}, over the {_mib(max_bytes)} limit")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"{p}: {exc.strerror or exc}") from None
    return decode_image(data, source=str(p), **limits)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent logos would turn black on a plain convert: flatten them onto white.
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8))
    return img.convert("RGB")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"

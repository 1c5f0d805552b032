"""Image intake: every attached image is checked and decoded once, then shared by all experts.

Limits are enforced before any pixel is decoded, so a tiny 20000x20000 PNG "bomb" is refused from
its header alone. Files are checked (a regular file, within the byte limit) before they are opened.

Memory stays bounded under load: a process-wide :class:`PixelBudget` caps the pixels being decoded (or,
inside :func:`decoded`, held for analysis) at once, experts that do not need full resolution get a
downscaled :meth:`DecodedImage.view`, and :meth:`DecodedImage.close` frees the pixels as soon as a
request is done with them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import os
import stat
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from experts.errors import ImageError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
# Two images at the pixel limit may be decoded at once; a third waits (one decoded 50 MP image holds
# about 200 MB in Pillow plus 150 MB per array an expert asks for).
DEFAULT_MAX_CONCURRENT_PIXELS = 2 * DEFAULT_MAX_PIXELS
# Images at least this big tune the allocator on first sight (see tune_malloc).
_BIG_IMAGE_PIXELS = 4_000_000
# Pillow format names we accept (the JPEG opener also reads the multi-picture MPO files phones write).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

# We do our own pixel check before decoding; Pillow's bomb guard would only add a second, looser one.
Image.MAX_IMAGE_PIXELS = None


@dataclass(eq=False)
class DecodedImage:
    """An accepted image: original bytes, their sha256 ``image_id`` and the RGB pixels.

    A :meth:`view` is a downscaled copy that keeps the ``image_id``; its ``original_size`` is the size of
    the image it was made from, so pixel coordinates can be mapped back (see :attr:`scale`).
    """

    image_id: str
    data: bytes = field(repr=False)
    image: Image.Image = field(repr=False)
    format: str
    source: str | None = None
    dpi: tuple[float, float] | None = None
    original_size: tuple[int, int] | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _views: dict[int, DecodedImage] = field(default_factory=dict, repr=False)
    _views_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from the original image to this one: (1.0, 1.0) unless this is a :meth:`view`."""
        if self.original_size is None:
            return (1.0, 1.0)
        return (self.width / self.original_size[0], self.height / self.original_size[1])

    def rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB array, computed once and shared (read-only; may be a view of :meth:`bgr`)."""
        return self._array("rgb")

    def bgr(self) -> np.ndarray:
        """HxWx3 uint8 C-contiguous BGR array for OpenCV, computed once and shared (read-only)."""
        return self._array("bgr")

    def _array(self, kind: str) -> np.ndarray:
        with self._lock:
            if self._closed:
                raise ImageError(f"{self.source or 'image'}: used after it was closed")
            arr = self._arrays.get(kind)
            if arr is not None:
                return arr
            have_bgr = self._arrays.get("bgr")
            if kind == "rgb" and have_bgr is not None:
                arr = have_bgr[:, :, ::-1]  # a view: no second copy of the pixels
            else:
                rgb = self._arrays.get("rgb")
                if rgb is None:
                    rgb = np.asarray(self.image)
                # OpenCV wants contiguous BGR; when only BGR is asked for, the RGB copy is dropped at once.
                arr = rgb if kind == "rgb" else np.ascontiguousarray(rgb[:, :, ::-1])
                del rgb
            arr.setflags(write=False)
            self._arrays[kind] = arr
            return arr

    def view(self, max_side: int | None) -> DecodedImage:
        """This image with its longer side at most ``max_side`` (itself when already small enough or when
        ``max_side`` is None). Views are made once per size and shared."""
        w, h = self.width, self.height
        if not max_side or max(w, h) <= max_side:
            return self
        with self._views_lock:
            found = self._views.get(max_side)
            if found is not None:
                return found
            if self._closed:
                raise ImageError(f"{self.source or 'image'}: used after it was closed")
            s = max_side / max(w, h)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            # reducing_gap: a fast box reduction first, then Lanczos on the already small image.
            small = self.image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            dpi = (self.dpi[0] * size[0] / w, self.dpi[1] * size[1] / h) if self.dpi else None
            found = DecodedImage(
                image_id=self.image_id,
                data=self.data,
                image=small,
                format=self.format,
                source=self.source,
                dpi=dpi,
                original_size=self.original_size or (w, h),
            )
            self._views[max_side] = found
            return found

    def close(self) -> None:
        """Free the pixels (arrays, views and the decoded image) now rather than when garbage is collected.
        Size, id and bytes stay readable; pixels do not."""
        with self._views_lock:
            views = list(self._views.values())
            self._views.clear()
        for v in views:
            v.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._arrays.clear()
            self.image.close()

    def describe(self) -> dict[str, Any]:
        """Size and format, for the model's note about what is attached."""
        return {"image_id": self.image_id, "width": self.width, "height": self.height, "format": self.format}


# --- pixel budget --------------------------------------------------------------------------------
class PixelBudget:
    """Caps the pixels decoded (or held) at once across threads.

    :meth:`reserve` waits, first come first served, until its pixels fit under ``capacity``. One image
    bigger than the whole budget does not fail: it waits until nothing else is reserved, then runs alone.
    A thread that already holds a reservation never waits for another (no self-deadlock when a caller
    holding :func:`decoded` decodes again), though its pixels still count.
    """

    def __init__(self, capacity: int = DEFAULT_MAX_CONCURRENT_PIXELS) -> None:
        self.capacity = int(capacity)
        self._in_use = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = threading.local()

    @property
    def in_use(self) -> int:
        """Pixels reserved right now."""
        return self._in_use

    def set_capacity(self, capacity: int) -> None:
        """Change the budget (waiting reservations are re-checked)."""
        with self._cond:
            self.capacity = max(1, int(capacity))
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, pixels: int, timeout: float | None = None) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block. Raises :class:`ImageError` when
        ``timeout`` seconds pass first."""
        pixels = max(0, int(pixels))
        self._acquire(pixels, timeout)
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            yield
        finally:
            self._held.depth -= 1
            with self._cond:
                self._in_use -= pixels
                self._cond.notify_all()

    def _acquire(self, pixels: int, timeout: float | None) -> None:
        with self._cond:
            if getattr(self._held, "depth", 0) > 0:
                self._in_use += pixels
                return
            ticket = object()
            self._queue.append(ticket)
            try:
                ok = self._cond.wait_for(lambda: self._queue[0] is ticket and self._fits(pixels), timeout)
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.remove(ticket)
            if not ok:
                self._cond.notify_all()
                raise ImageError(
                    f"busy: {pixels / 1e6:.1f} MP did not fit in the {self.capacity / 1e6:.0f} MP decode budget "
                    f"within {timeout:g} s"
                )
            self._in_use += pixels
            self._cond.notify_all()  # the next in line may fit too

    def _fits(self, pixels: int) -> bool:
        return self._in_use == 0 or self._in_use + pixels <= self.capacity


PIXEL_BUDGET = PixelBudget()
"""The process-wide budget :func:`decode_image` and :func:`decoded` reserve from."""


def configure_pixel_budget(max_concurrent_pixels: int) -> None:
    """Set how many pixels may be decoded or held at once in this process."""
    PIXEL_BUDGET.set_capacity(max_concurrent_pixels)


# --- decoding ------------------------------------------------------------------------------------
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
    """Check and decode one image. Raises :class:`ImageError` with one clear line on any problem.
    The decode itself waits for its pixels in :data:`PIXEL_BUDGET`."""
    img = _open_checked(data, source, max_bytes, max_pixels)
    with PIXEL_BUDGET.reserve(img.width * img.height):
        return _decode_opened(img, data, source)


@contextlib.contextmanager
def decoded(
    data: bytes,
    *,
    source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout: float | None = None,
) -> Iterator[DecodedImage]:
    """Decode ``data`` and hold its pixels in :data:`PIXEL_BUDGET` for the whole ``with`` block (decode
    and analysis), then free them: peak memory stays bounded however many requests arrive at once."""
    img = _open_checked(data, source, max_bytes, max_pixels)
    with PIXEL_BUDGET.reserve(img.width * img.height, timeout=timeout):
        image = _decode_opened(img, data, source)
        del img
        try:
            yield image
        finally:
            image.close()


def _open_checked(data: bytes, source: str | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """Read the header only and apply the byte and pixel limits."""
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
        raise ImageError(f"{name}not a supported image (accepted: PNG, JPEG, WebP, GIF, BMP, TIFF)") from None
    except Exception as exc:  # Pillow raises many types on corrupt headers
        raise ImageError(f"{name}unreadable image header: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}image is {w}x{h} = {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:.0f} MP limit")
    return img


def _decode_opened(img: Image.Image, data: bytes, source: str | None) -> DecodedImage:
    fmt = img.format or "unknown"
    if img.width * img.height >= _BIG_IMAGE_PIXELS:
        tune_malloc()
    try:
        img.seek(0)  # GIF/TIFF: first frame
        img.load()
        dpi = img.info.get("dpi")
        # In place: the copying form returns a full copy even when there is nothing to rotate.
        ImageOps.exif_transpose(img, in_place=True)
        rgb = _replace(img, _to_rgb(img))
    except Exception as exc:
        name = f"{source}: " if source else ""
        raise ImageError(f"{name}truncated or corrupt {fmt} image: {exc}") from None
    dpi_t = (float(dpi[0]), float(dpi[1])) if isinstance(dpi, tuple) and len(dpi) == 2 else None
    return DecodedImage(image_id=image_id_of(data), data=data, image=rgb, format=fmt, source=source, dpi=dpi_t)


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """Free ``old`` as soon as ``new`` replaces it: a converted 50 MP copy is 200 MB."""
    if new is old:
        return old
    old.close()
    return new


def decode_base64_image(b64: str, *, index: int | None = None, **limits: Any) -> DecodedImage:
    """Decode a bare base64 image (Ollama's ``images`` field); ``data:`` URLs are accepted too."""
    data = base64_bytes(b64, index=index, max_bytes=limits.get("max_bytes", DEFAULT_MAX_BYTES))
    return decode_image(data, source=_label(index), **limits)


def base64_bytes(b64: str, *, index: int | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes of a bare base64 image or a ``data:`` URL; one-line :class:`ImageError` otherwise.
    With ``max_bytes``, an image that would decode to more is refused from its length alone, before
    anything is decoded; the text is sliced without copying it (a big image arrives as tens of MB)."""
    label = _label(index)
    s = b64.strip()
    start = 0
    if s.startswith("data:"):
        comma = s.find(",", 0, 4096)  # a data: URL's header is short
        if comma < 0 or ";base64" not in s[:comma]:
            raise ImageError(f"{label}: data URL is not base64-encoded")
        start = comma + 1
    size = (len(s) - start) * 3 // 4
    if max_bytes is not None and size > max_bytes + 2:
        raise ImageError(f"{label}: image is {_mib(size)}, over the {_mib(max_bytes)} limit")
    try:
        raw = memoryview(s.encode("ascii"))[start:]
    except UnicodeEncodeError:
        raise ImageError(f"{label}: illegal base64 data") from None
    try:
        if sys.version_info >= (3, 11):
            return binascii.a2b_base64(raw, strict_mode=True)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{label}: illegal base64 data") from None


def _label(index: int | None) -> str:
    return f"image {index}" if index is not None else "image"


# --- files and streams ---------------------------------------------------------------------------
_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def read_image_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of an image file the user named, checked before and after opening: a regular file
    (symlinks followed; FIFOs, devices, sockets and directories refused without reading) within
    ``max_bytes``. Reads at most ``max_bytes + 1`` bytes whatever the file claims."""
    p = Path(path)
    return read_regular_file(p, max_bytes, lambda reason: ImageError(f"{p}: {reason}"), noun="image")


def read_regular_file(path: str | Path, max_bytes: int, fail: Callable[[str], Exception], noun: str = "file") -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` of them: the same stat-first checks for images,
    config files and keyword tables. Anything else (missing, a FIFO, a device, a socket, a folder, too
    big) raises ``fail(reason)``, ``reason`` being one short clause such as ``is a FIFO (named pipe), not
    an image file``. The file is opened non-blocking (a FIFO swapped in after the stat cannot hang the
    open), checked again once open, and read to at most ``max_bytes + 1`` bytes whatever it claims."""
    p = Path(path)
    st = _stat(os.stat, p, fail)
    _check_regular(st.st_mode, st.st_size, max_bytes, fail, noun)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise fail(str(exc.strerror or exc)) from None
    with open(fd, "rb", buffering=0, closefd=True) as fh:
        st = _stat(os.fstat, fd, fail)  # the file actually opened
        _check_regular(st.st_mode, st.st_size, max_bytes, fail, noun)
        try:
            data = read_capped(fh, max_bytes)
        except OSError as exc:
            raise fail(str(exc.strerror or exc)) from None
    if len(data) > max_bytes:  # the file grew after the stat
        raise fail(f"{noun} is over the {_mib(max_bytes)} limit")
    return data


def read_text_file(path: str | Path, max_bytes: int, fail: Callable[[str], Exception], kind: str = "TOML") -> str:
    """The UTF-8 text of a regular file (config files, keyword tables, presets, eval suites, style libraries):
    :func:`read_regular_file`'s checks, then UTF-16 and other non-UTF-8 bytes refused with a reason a person
    can act on (``kind`` names the format: "TOML files are UTF-8"). A UTF-8 BOM (Notepad) is harmless."""
    raw = read_regular_file(path, max_bytes, fail, noun="file")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        len(raw) >= 4 and (raw[1] == raw[3] == 0 or raw[0] == raw[2] == 0) and raw[:4].count(0) == 2
    ):
        raise fail(f"is UTF-16 text: {kind} files are UTF-8 (save it again as UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): {kind} files are UTF-8"
        ) from None


def read_capped(stream: Any, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of a binary stream (a pipe, stdin, a file): one byte past the
    limit is enough to refuse it, and an endless stream (``< /dev/zero``) is never read further."""
    chunks: list[bytes] = []
    left = max_bytes + 1
    while left > 0:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_image_stream(stream: Any, source: str = "stdin", max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of an image piped in (``-`` on the command line), refused past ``max_bytes`` after
    reading at most one byte more."""
    data = read_capped(stream, max_bytes)
    if len(data) > max_bytes:
        raise ImageError(f"{source}: image is over the {_mib(max_bytes)} limit")
    return data


def _stat(fn: Any, target: Any, fail: Callable[[str], Exception]) -> os.stat_result:
    try:
        return fn(target)
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise fail(str(getattr(exc, "strerror", None) or exc)) from None


def _check_regular(mode: int, size: int, max_bytes: int, fail: Callable[[str], Exception], noun: str) -> None:
    a_noun = f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"
    for test, what in _NOT_REGULAR:
        if test(mode):
            raise fail(f"is {what}, not {a_noun}" + ("" if test is stat.S_ISDIR or noun == "file" else " file"))
    if not stat.S_ISREG(mode):
        raise fail("not a regular file")
    if size > max_bytes:
        raise fail(f"{noun} is {_mib(size)}, over the {_mib(max_bytes)} limit")


def load_image_file(path: str | Path, **limits: Any) -> DecodedImage:
    """Read and decode an image file named by the user (never a path taken from model or expert text)."""
    data = read_image_file(path, limits.get("max_bytes", DEFAULT_MAX_BYTES))
    return decode_image(data, source=str(path), **limits)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent logos would turn black on a plain convert: flatten them onto white.
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        rgba.close()
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8))
    return img.convert("RGB")


# --- allocator -----------------------------------------------------------------------------------
_malloc_tuned = False


def tune_malloc() -> None:
    """On glibc, serve allocations of 4 MiB and more from mmap, once per process (servers call it at start:
    request bodies of tens of MB go through the same allocator).

    Why: glibc raises its mmap threshold to the size of each big block freed (up to 32 MiB), so after
    the first large image Pillow's 16 MiB pixel blocks and numpy's buffers land in per-thread heaps that
    fragment and are never returned: retained RSS grew by hundreds of MB per burst of concurrent
    decodes. A fixed threshold hands big buffers back to the system as soon as they are freed.
    ``VISION_ROUTER_MALLOC_TUNING=0`` leaves the allocator alone.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if not sys.platform.startswith("linux") or os.environ.get("VISION_ROUTER_MALLOC_TUNING") == "0":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 4 * 1024 * 1024)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"

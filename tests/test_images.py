"""Image intake: formats, EXIF, limits, and one clear error per bad input."""

from __future__ import annotations

import base64
import io
import resource
import zlib

import pytest
from PIL import Image

from experts.errors import ImageError
from experts.images import decode_base64_image, decode_image, image_id_of, load_image_file
from tests.conftest import png_bytes


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepted_formats_decode_to_rgb(fmt):
    data = png_bytes(40, 30, (200, 10, 10), fmt=fmt)
    img = decode_image(data)
    assert (img.width, img.height) == (40, 30)
    assert img.image.mode == "RGB"
    assert img.image_id == image_id_of(data)
    r, g, b = img.rgb()[15, 20]
    assert r > 150 and g < 60 and b < 60
    assert img.bgr()[15, 20][2] == r


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    img = decode_image(buf.getvalue())
    assert (img.width, img.height) == (20, 60)


def test_transparent_logo_is_flattened_on_white():
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert tuple(decode_image(buf.getvalue()).rgb()[5, 5]) == (255, 255, 255)


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(buf.getvalue()).rgb()[0, 0]
    assert r > 200 and b < 50


def test_dpi_is_kept():
    assert decode_image(png_bytes(10, 10, fmt="PNG", dpi=(300, 300))).dpi == pytest.approx((300, 300), abs=1)


def test_empty_random_and_truncated_inputs_each_get_one_clear_error():
    with pytest.raises(ImageError, match="empty image"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(bytes(range(256)) * 4)
    data = png_bytes(200, 200, (10, 200, 10), fmt="JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def _png_bomb(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels with a tiny compressed body."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    row = b"\x00" + b"\x00" * side
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_pixel_bomb_is_refused_from_the_header_without_decoding():
    bomb = _png_bomb(20000)
    assert len(bomb) < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match=r"20000x20000 = 400.0 MP, over the 50 MP limit"):
        decode_image(bomb)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000  # decoding would need 400 MB


def test_byte_limit():
    with pytest.raises(ImageError, match="over the 0.0 MiB limit"):
        decode_image(png_bytes(), max_bytes=10)


def test_base64_and_data_urls():
    data = png_bytes(12, 12)
    b64 = base64.b64encode(data).decode()
    assert decode_base64_image(b64).image_id == image_id_of(data)
    assert decode_base64_image("data:image/png;base64," + b64).image_id == image_id_of(data)
    with pytest.raises(ImageError, match="image 2: illegal base64 data"):
        decode_base64_image("not base64!!", index=2)


def test_files(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(png_bytes())
    assert load_image_file(p).source == str(p)
    with pytest.raises(ImageError, match="no such file"):
        load_image_file(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image_file(tmp_path)

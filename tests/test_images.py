"""Image intake: formats, EXIF, limits, and one clear error per bad input."""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from experts.base import Expert
from experts.errors import ImageError
from experts.images import (
    PixelBudget,
    decode_base64_image,
    decode_image,
    decoded,
    image_id_of,
    load_image_file,
    read_image_file,
)
from experts.schema import BBox, ExpertResult, TextLine
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[1]


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


# --- files: checked before they are opened or read -----------------------------------------------
def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _in_thread(fn, timeout: float = 5.0):
    """Run ``fn`` in a daemon thread; a hang fails the test instead of freezing it."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} hung"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"pipe\.png: is a FIFO \(named pipe\), not an image file$"):
        _in_thread(lambda: load_image_file(fifo))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_behind_a_symlink_is_refused_without_reading(tmp_path):
    link = tmp_path / "photo.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match=r"photo\.png: is a character device, not an image file$"):
        _in_thread(lambda: load_image_file(link))


def test_oversized_file_is_refused_from_its_size_without_reading(tmp_path):
    big = tmp_path / "huge.png"
    with open(big, "wb") as fh:  # sparse: 1.5 GB on paper, nothing on disk
        fh.truncate(1536 * 1024 * 1024)
    before = _rss_kib()
    with pytest.raises(ImageError, match=r"huge\.png: image is 1536\.0 MiB, over the 64\.0 MiB limit"):
        load_image_file(big)
    with pytest.raises(ImageError, match="over the 0.0 MiB limit"):
        read_image_file(big, max_bytes=100)
    assert _rss_kib() - before < 20_000


def test_read_stops_at_the_limit_when_a_file_lies_about_its_size(tmp_path, monkeypatch):
    """A file that grows between the check and the read is cut at max_bytes + 1, then refused."""
    p = tmp_path / "grows.png"
    p.write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def shrunk(fd):
        st = real_fstat(fd)
        return os.stat_result(
            (
                st.st_mode,
                st.st_ino,
                st.st_dev,
                st.st_nlink,
                st.st_uid,
                st.st_gid,
                10,
                st.st_atime,
                st.st_mtime,
                st.st_ctime,
            )
        )

    real_stat = os.stat
    monkeypatch.setattr(
        os,
        "stat",
        lambda path, *a, **k: shrunk(os.open(path, os.O_RDONLY)) if str(path) == str(p) else real_stat(path, *a, **k),
    )
    monkeypatch.setattr(os, "fstat", shrunk)
    with pytest.raises(ImageError, match="grows.png: image is over the 0.0 MiB limit"):
        read_image_file(p, max_bytes=100)


# --- pixel budget --------------------------------------------------------------------------------
def test_budget_caps_pixels_held_at_once():
    budget = PixelBudget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def work():
        with budget.reserve(45):
            with lock:
                held[0] += 45
                peak[0] = max(peak[0], held[0])
            time.sleep(0.05)
            with lock:
                held[0] -= 45

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 90 and budget.in_use == 0


def test_image_bigger_than_the_budget_waits_for_exclusive_use():
    budget = PixelBudget(100)
    order: list[str] = []
    small_in = threading.Event()
    release_small = threading.Event()

    def small():
        with budget.reserve(30):
            small_in.set()
            release_small.wait(5)
            order.append("small done")

    def huge():
        with budget.reserve(250):  # over the whole budget: runs alone, never fails
            order.append(f"huge in, in_use={budget.in_use}")

    ts = threading.Thread(target=small)
    ts.start()
    assert small_in.wait(5)
    th = threading.Thread(target=huge)
    th.start()
    time.sleep(0.1)
    assert order == []  # still waiting for the small one
    release_small.set()
    ts.join(5)
    th.join(5)
    assert order == ["small done", "huge in, in_use=250"]


def test_budget_is_first_come_first_served_and_times_out_with_one_line():
    budget = PixelBudget(100)
    entered: list[str] = []

    def take(name: str, pixels: int) -> None:
        with budget.reserve(pixels):
            entered.append(name)

    mp = PixelBudget(100_000_000)
    with mp.reserve(80_000_000):
        with pytest.raises(ImageError, match=r"^busy: 30\.0 MP did not fit in the 100 MP decode budget within 0\.1 s$"):
            _in_thread(lambda: mp.reserve(30_000_000, timeout=0.1).__enter__())
    assert mp.in_use == 0

    with budget.reserve(80):
        first = threading.Thread(target=take, args=("50 px, first", 50))
        first.start()
        time.sleep(0.1)
        second = threading.Thread(target=take, args=("10 px, second", 10))
        second.start()  # would fit now, but waits its turn behind the first
        time.sleep(0.1)
        assert entered == []
        # A thread that already holds pixels never waits for more (no self-deadlock on nested decodes).
        with budget.reserve(90):
            assert budget.in_use == 170
    first.join(5)
    second.join(5)
    assert entered == ["50 px, first", "10 px, second"] and budget.in_use == 0


def test_decoded_holds_the_budget_and_frees_the_pixels(monkeypatch):
    from experts import images

    budget = PixelBudget(10_000)
    monkeypatch.setattr(images, "PIXEL_BUDGET", budget)
    with decoded(png_bytes(40, 30)) as img:
        assert budget.in_use == 1200 and img.rgb().shape == (30, 40, 3)
    assert budget.in_use == 0
    assert (img.width, img.height) == (40, 30)  # size stays readable, pixels do not
    with pytest.raises(ImageError, match="used after it was closed"):
        img.bgr()


def test_bgr_alone_keeps_one_copy_and_rgb_is_a_view_of_it():
    img = decode_image(png_bytes(40, 30, (200, 10, 10)))
    bgr = img.bgr()
    assert bgr.flags.c_contiguous and tuple(bgr[0, 0]) == (10, 10, 200)
    rgb = img.rgb()
    assert rgb.base is bgr or rgb.base is bgr.base
    assert tuple(rgb[0, 0]) == (200, 10, 10)


# --- downscaled views ----------------------------------------------------------------------------
class _BoxExpert(Expert):
    """Finds 'the centre quarter' of whatever it is shown, in the pixels it was shown."""

    name = "boxes"
    max_side = 100

    def _analyze(self, image, args) -> ExpertResult:
        w, h = image.width, image.height
        return self.new_result(
            image,
            attributes={"seen": [w, h]},
            bbox=[BBox(label="centre", x1=w / 4, y1=h / 4, x2=3 * w / 4, y2=3 * h / 4)],
            text=[TextLine(text="t", score=1.0, box=[[0, 0], [w, 0], [w, h], [0, h]], bbox=[0, 0, w, h])],
        )


def test_expert_with_max_side_sees_a_view_and_answers_in_original_pixels():
    img = decode_image(png_bytes(800, 400, dpi=(300, 300)))
    res = _BoxExpert().analyze(img, {})
    assert res.attributes["seen"] == [100, 50]
    b = res.bbox[0]
    assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx((200, 100, 600, 300))
    assert res.text[0].bbox == pytest.approx([0, 0, 800, 400])
    assert res.text[0].box[2] == pytest.approx([800, 400])
    assert res.image_id == img.image_id
    view = img.view(100)
    assert view is img.view(100) and view.original_size == (800, 400) and view.scale == (0.125, 0.125)
    assert view.dpi == pytest.approx((37.5, 37.5), abs=0.1)  # same physical size
    small = decode_image(png_bytes(80, 40))
    assert small.view(100) is small and _BoxExpert().analyze(small, {}).attributes["seen"] == [80, 40]


# --- memory under load ---------------------------------------------------------------------------
_RSS_SCRIPT = r"""
import io, json, sys
from concurrent.futures import ThreadPoolExecutor
from PIL import Image
from experts.base import Expert
from experts.images import PIXEL_BUDGET, decoded
from experts.schema import BBox

def rss():
    with open("/proc/self/status") as fh:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh) if k in ("VmRSS", "VmHWM")}

class Probe(Expert):
    name = "probe"
    max_side = 1024
    def _analyze(self, image, args):
        mean = float(image.rgb()[::7, ::7].mean())
        return self.new_result(image, attributes={"seen": [image.width, image.height], "mean": mean},
                               bbox=[BBox(label="all", x1=0, y1=0, x2=image.width, y2=image.height)])

if sys.argv[1] == "unbounded":
    PIXEL_BUDGET.set_capacity(10**12)
buf = io.BytesIO()
Image.new("RGB", (7500, 6000), (120, 130, 140)).save(buf, "PNG", compress_level=1)  # 45 MP
data = buf.getvalue()
del buf
expert = Probe()

def request(_):
    with decoded(data) as img:
        full = img.bgr()  # what a full-resolution expert (detect, ocr) asks for
        res = expert.analyze(img, {})
        assert res.attributes["seen"] == [1024, 819] and res.bbox[0].x2 == 7500.0, res
        return int(full[0, 0, 0])

base = rss()["VmRSS"]
seq = []
for i in range(6):
    request(i)
    seq.append(rss())
with ThreadPoolExecutor(3) as pool:
    list(pool.map(request, range(3)))
end = rss()
print(json.dumps({"base": base, "single_peak": seq[0]["VmHWM"], "seq": [s["VmRSS"] for s in seq],
                  "peak": end["VmHWM"], "retained": end["VmRSS"]}))
"""


def _rss_run(mode: str, env: dict[str, str]) -> dict[str, int]:
    r = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, mode],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc (Linux)")
def test_rss_stays_bounded_for_big_images_sequential_and_concurrent():
    """6 sequential then 3 concurrent 45 MP requests (decode + a full-size BGR array + an expert on a
    downscaled view): concurrent peak stays near two requests' worth, and RSS returns to the baseline.
    A control run without the budget and the allocator tuning shows the bound is not slack."""
    got = _rss_run("bounded", {})
    one = got["single_peak"] - got["base"]  # KiB one request needs at its peak (~440 MB)
    assert one > 200_000, got
    assert got["peak"] - got["base"] < 2.4 * one, got  # at most two 45 MP requests at once (budget 100 MP)
    assert max(got["seq"]) - got["base"] < 60_000, got  # nothing kept between sequential requests
    assert got["retained"] - got["base"] < 100_000, got  # and nothing kept after the burst

    control = _rss_run("unbounded", {"VISION_ROUTER_MALLOC_TUNING": "0"})
    c_one = control["single_peak"] - control["base"]
    assert control["peak"] - control["base"] > 2.4 * c_one or control["retained"] - control["base"] > 100_000, control

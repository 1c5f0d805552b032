"""One engine pass per image and engine configuration: arguments that only filter a result (ocr's ``query``)
reuse the pass, concurrent identical passes share one run, and the cache keeps the pass."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from experts.images import decode_image
from experts.ocr import OcrExpert
from experts.ocr_engines import OcrEngine
from experts.registry import Registry
from experts.text_layout import Segment
from router.core.cache import ResultCache
from router.core.dispatch import Dispatcher, ExpertCall
from tests.conftest import png_bytes

WORDS = ["Invoice 2041", "Total 18.50", "Thank you"]


class CountingEngine(OcrEngine):
    """Reads three fixed lines, slowly enough that concurrent callers overlap; counts its runs."""

    name = "counting"

    def __init__(self, fail: bool = False) -> None:
        self.runs = 0
        self.fail = fail
        self.lock = threading.Lock()

    def run(self, bgr: np.ndarray) -> list[Segment]:
        with self.lock:
            self.runs += 1
        time.sleep(0.05)
        if self.fail:
            raise RuntimeError("engine exploded")
        return [
            Segment(
                np.array([[10, 10 + 30 * i], [200, 10 + 30 * i], [200, 30 + 30 * i], [10, 30 + 30 * i]], float), t, 0.9
            )
            for i, t in enumerate(WORDS)
        ]


class CountedOcr(OcrExpert):
    """The real ocr expert and layout step on a counted engine."""

    engine = CountingEngine()

    def engine_for(self, requested: str = "auto", lang: str | None = None) -> OcrEngine:
        return self.engine


@pytest.fixture
def setup():
    CountedOcr.engine = engine = CountingEngine()
    reg = Registry()
    reg.register(CountedOcr)
    image = decode_image(png_bytes(240, 120))
    return engine, Dispatcher(reg, ResultCache()), image  # ResultCache(): memory only


QUERIES = ["invoice", "total", "18.50", "thank", "refund", "2041", "you", "VAT"]


def test_eight_queries_run_the_engine_once_and_each_gets_its_own_answer(setup):
    engine, dispatcher, image = setup
    results = dispatcher.run_sync([ExpertCall(image, 1, "ocr", query=q) for q in QUERIES])
    assert engine.runs == 1
    found = {r.args["query"]: r.attributes["query_found"] for r in results}
    assert found == {q: q not in ("refund", "VAT") for q in QUERIES}
    assert results[1].attributes["query_matches"] == ["Total 18.50"]
    assert all(r.error is None and [t.text for t in r.text] == WORDS for r in results)
    # The cache keeps the pass (memory only): more queries and the plain read come from it.
    more = dispatcher.run_sync([ExpertCall(image, 1, "ocr"), ExpertCall(image, 1, "ocr", query="zebra")])
    assert engine.runs == 1
    assert "query" not in more[0].attributes and more[1].attributes["query_found"] is False
    assert more[1].args == {"query": "zebra"}


def test_arguments_that_shape_the_pass_get_their_own_pass(setup):
    engine, dispatcher, image = setup
    dispatcher.run_sync(
        [
            ExpertCall(image, 1, "ocr", {"lang": "en"}, query="a"),
            ExpertCall(image, 1, "ocr", {"lang": "en"}, query="b"),
            ExpertCall(image, 1, "ocr", query="a"),
        ]
    )
    assert engine.runs == 2


def test_a_failed_pass_is_an_error_line_for_every_query_and_is_not_cached(setup):
    engine, dispatcher, image = setup
    engine.fail = True
    results = dispatcher.run_sync([ExpertCall(image, 1, "ocr", query=q) for q in ("a", "b")])
    assert [r.error for r in results] == ["RuntimeError: engine exploded"] * 2
    assert [r.args for r in results] == [{"query": "a"}, {"query": "b"}]
    engine.fail = False
    assert dispatcher.run_sync([ExpertCall(image, 1, "ocr", query="a")])[0].error is None
    assert engine.runs == 2  # one shared failed pass, one new pass


def test_a_caller_giving_up_does_not_cancel_the_shared_pass(setup):
    engine, dispatcher, image = setup

    async def scenario():
        first = dispatcher.start(ExpertCall(image, 1, "ocr", query="invoice"))
        second = dispatcher.start(ExpertCall(image, 1, "ocr", query="total"))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    result = asyncio.run(scenario())
    assert result.attributes["query_found"] is True and engine.runs == 1


def test_direct_analyze_applies_the_query(setup):
    _, _, image = setup
    result = CountedOcr().analyze(image, {"query": "thank"})
    assert result.attributes["query_matches"] == ["Thank you"] and result.args == {"query": "thank"}

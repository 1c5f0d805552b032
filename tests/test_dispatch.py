"""Dispatcher and cache: concurrency, timeouts, failures as error lines, dedupe, LRU and disk."""

from __future__ import annotations

import asyncio
import time

import pytest

from experts.images import decode_image
from experts.schema import ExpertResult
from router.core.cache import ResultCache, cache_key
from router.core.dispatch import Dispatcher, ExpertCall
from tests.conftest import png_bytes
from tests.router_experts import BrokenExpert, FakeOcr, HangingExpert, SlowExpert, make_registry


@pytest.fixture
def image():
    return decode_image(png_bytes(32, 32))


def test_concurrent_experts_take_about_the_slowest_ones_time(image):
    class Slow2(SlowExpert):
        name = "slow2"

    class Slow3(SlowExpert):
        name = "slow3"

    reg = make_registry(SlowExpert, Slow2, Slow3)
    d = Dispatcher(reg, ResultCache())
    t0 = time.perf_counter()
    results = d.run_sync([ExpertCall(image, 1, n) for n in ("slow", "slow2", "slow3")])
    wall = time.perf_counter() - t0
    assert [r.error for r in results] == [None, None, None]
    assert wall < 3 * SlowExpert.cost * 0.8  # not run one after another


def test_failures_and_timeouts_become_error_lines_while_others_answer(image):
    HangingExpert.release.clear()
    reg = make_registry(BrokenExpert, HangingExpert)
    d = Dispatcher(reg, ResultCache(), timeout_s=5, timeouts={"hang": 0.3})
    t0 = time.perf_counter()
    ocr, broken, hang, unknown, badarg = d.run_sync(
        [
            ExpertCall(image, 1, "ocr"),
            ExpertCall(image, 1, "broken"),
            ExpertCall(image, 1, "hang"),
            ExpertCall(image, 1, "telepathy"),
            ExpertCall(image, 1, "detect", {"min_area": "lots"}),
        ]
    )
    HangingExpert.release.set()
    assert time.perf_counter() - t0 < 3
    assert ocr.error is None and ocr.full_text == FakeOcr.text
    assert broken.error == "RuntimeError: engine exploded"
    assert hang.error == "timed out after 0.3 s while running"
    assert unknown.error == "unknown expert 'telepathy' (available: broken, detect, hang, ocr)"
    assert "bad argument 'min_area'" in badarg.error


def test_identical_calls_run_once_and_aliases_share_the_key(image):
    FakeOcr.calls = 0
    d = Dispatcher(make_registry(), ResultCache())
    results = d.run_sync([ExpertCall(image, 1, "ocr"), ExpertCall(image, 1, "text"), ExpertCall(image, 1, "OCR")])
    assert FakeOcr.calls == 1
    assert all(r.full_text == FakeOcr.text for r in results)


def test_free_text_fills_the_positional_argument(image):
    d = Dispatcher(make_registry(), ResultCache())
    (r,) = d.run_sync([ExpertCall(image, 1, "detect", query="face")])
    assert r.args == {"query": "face"} and r.bbox[0].label == "face"


def test_cache_hits_skip_the_expert_and_count(image):
    FakeOcr.calls = 0
    cache = ResultCache()
    d = Dispatcher(make_registry(), cache)
    d.run_sync([ExpertCall(image, 1, "ocr")])
    (again,) = d.run_sync([ExpertCall(image, 1, "ocr")])
    assert FakeOcr.calls == 1 and again.cached
    assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.stats.hit_rate == 0.5


def test_errors_are_not_cached(image):
    cache = ResultCache()
    d = Dispatcher(make_registry(BrokenExpert), cache)
    d.run_sync([ExpertCall(image, 1, "broken")])
    d.run_sync([ExpertCall(image, 1, "broken")])
    assert cache.stats.hits == 0 and len(cache) == 0


def test_lru_evicts_oldest():
    c = ResultCache(max_items=2)
    for i in range(3):
        c.put(f"k{i}", ExpertResult(image_id="x", expert="ocr", caption=str(i)))
    assert c.get("k0") is None and c.get("k2").caption == "2"


def test_disk_cache_survives_a_new_process_cache(tmp_path, image):
    FakeOcr.calls = 0
    d1 = Dispatcher(make_registry(), ResultCache(disk_dir=tmp_path))
    d1.run_sync([ExpertCall(image, 1, "ocr")])
    d1.cache.close()
    cache2 = ResultCache(disk_dir=tmp_path)
    d2 = Dispatcher(make_registry(), cache2)
    (r,) = d2.run_sync([ExpertCall(image, 1, "ocr")])
    assert FakeOcr.calls == 1 and r.cached and cache2.stats.disk_hits == 1


def test_a_new_expert_version_or_config_does_not_reuse_old_disk_results(tmp_path, image, monkeypatch):
    FakeOcr.calls = 0
    d1 = Dispatcher(make_registry(), ResultCache(disk_dir=tmp_path))
    d1.run_sync([ExpertCall(image, 1, "ocr")])
    d1.cache.close()
    monkeypatch.setattr(FakeOcr, "version", "2")  # an upgraded expert: results made by old code are stale
    d2 = Dispatcher(make_registry(), ResultCache(disk_dir=tmp_path))
    (r,) = d2.run_sync([ExpertCall(image, 1, "ocr")])
    assert FakeOcr.calls == 2 and not r.cached
    d2.cache.close()
    reg = make_registry()
    reg.configure("ocr", engine="paddle")  # another engine setting gives other results
    (r,) = Dispatcher(reg, ResultCache(disk_dir=tmp_path)).run_sync([ExpertCall(image, 1, "ocr")])
    assert FakeOcr.calls == 3 and not r.cached


def test_cache_key_ignores_argument_order():
    assert cache_key("i", "e", {"a": 1, "b": 2}) == cache_key("i", "e", {"b": 2, "a": 1})


def test_dispatcher_works_inside_a_running_loop(image):
    async def main():
        d = Dispatcher(make_registry(), ResultCache())
        return await d.run_all([ExpertCall(image, 1, "detect")])

    (r,) = asyncio.run(main())
    assert r.measurements["count"] == 2


def test_run_sync_from_several_threads_at_once(image):
    """Scripts may call the blocking API from threads: each gets its own loop, no shared futures."""
    import concurrent.futures

    SlowExpert.cost = 0.05
    d = Dispatcher(make_registry(SlowExpert), ResultCache(max_items=0))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: d.run_sync([ExpertCall(image, 1, "slow")])[0], range(8)))
    assert [r.error for r in results] == [None] * 8

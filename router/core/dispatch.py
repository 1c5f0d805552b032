"""Runs experts: concurrently, each with its own timeout, deduplicated, through the cache.

A failing or hanging expert becomes an :class:`ExpertResult` with ``error`` set; it never fails the
request. Experts run in daemon threads (OpenCV, ONNX Runtime and torch release the GIL), so a
hung engine cannot block the event loop or the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from experts.cancel import StopSignal, run_cancellable
from experts.errors import EngineMissing, VisionRouterError
from experts.images import DecodedImage
from experts.registry import Registry
from experts.schema import ExpertResult
from router.core.cache import ResultCache, cache_key

T = TypeVar("T")


@dataclass(eq=False)
class ExpertCall:
    """One request for an expert on one image. ``source`` says who asked: keyword, tag, fallback, tool."""

    image: DecodedImage
    image_index: int
    expert: str
    args: dict[str, Any] = field(default_factory=dict)
    query: str | None = None
    source: str = "tag"


class Dispatcher:
    """Resolve, validate, deduplicate, cache and run expert calls."""

    def __init__(
        self,
        registry: Registry,
        cache: ResultCache | None = None,
        *,
        timeout_s: float = 60.0,
        timeouts: dict[str, float] | None = None,
        load_timeout_s: float = 900.0,
        max_concurrency: int = 4,
    ) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else ResultCache()
        self.timeout_s = timeout_s
        self.timeouts = dict(timeouts or {})
        self.load_timeout_s = load_timeout_s
        self.max_concurrency = max(1, max_concurrency)
        # Both keyed by event loop: a future or semaphore belongs to the loop that made it, and scripts
        # may call run_sync from several threads, each with its own loop.
        self._inflight: dict[tuple[int, str], asyncio.Future[ExpertResult]] = {}
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def timeout_for(self, expert: str) -> float:
        return float(self.timeouts.get(expert, self.timeout_s))

    def start(self, call: ExpertCall) -> asyncio.Future[ExpertResult]:
        """Start a call now (must be called inside a running event loop); returns its future.

        One engine pass per image, expert configuration and pass arguments: an identical pass already
        running is shared, not repeated, and a cached one is reused; arguments that only filter the result
        (the expert's ``filter_args``, e.g. ocr's ``query``) are applied to a copy of the shared pass."""
        loop = asyncio.get_running_loop()
        try:
            expert = self.registry.get(call.expert)
            args = dict(call.args)
            if call.query and expert.positional and expert.positional not in args:
                args[expert.positional] = call.query
            parsed = expert.parse_args(args)
            why = self.registry.unavailable(expert.name)
            if why is not None:  # known at start-up or from an earlier load: skipped at once, never retried
                raise EngineMissing(f"{expert.name} cannot run here: {why}")
        except VisionRouterError as exc:
            fut: asyncio.Future[ExpertResult] = loop.create_future()
            fut.set_result(ExpertResult.failure(call.image.image_id, call.expert, call.args, str(exc)))
            return fut
        canonical = parsed.model_dump(exclude_defaults=True, mode="json")
        pass_args = expert.pass_args(canonical)
        shared = self._start_pass(expert, call.image, pass_args)
        if pass_args == canonical:
            return shared
        return asyncio.ensure_future(_refined(expert, shared, parsed, canonical))

    def _start_pass(self, expert: Any, image: DecodedImage, args: dict[str, Any]) -> asyncio.Future[ExpertResult]:
        """The future of the engine pass for ``args``: the running one, the cached one, or a new run."""
        loop = asyncio.get_running_loop()
        key = cache_key(image.image_id, f"{expert.name}@{expert.cache_tag()}", args)
        running = self._inflight.get((id(loop), key))
        if running is not None:
            return running
        cached = self.cache.get(key)
        if cached is not None:
            fut: asyncio.Future[ExpertResult] = loop.create_future()
            fut.set_result(cached)
            return fut
        task = asyncio.ensure_future(self._run(expert, image, args, key))
        slot = (id(loop), key)
        self._inflight[slot] = task
        task.add_done_callback(lambda _t, k=slot: self._inflight.pop(k, None))
        return task

    async def run_all(self, calls: list[ExpertCall]) -> list[ExpertResult]:
        """Run calls concurrently; results in the order of ``calls``."""
        futures = [self.start(c) for c in calls]
        return list(await asyncio.gather(*futures))

    def run_sync(self, calls: list[ExpertCall]) -> list[ExpertResult]:
        """Blocking variant for scripts."""
        return run_coroutine(self.run_all(calls))

    async def _run(self, expert: Any, image: DecodedImage, args: dict[str, Any], key: str) -> ExpertResult:
        name = expert.name
        sem = self._semaphore()
        stop = StopSignal()  # set when this run is given up on (see experts.cancel)
        async with sem:
            t0 = time.perf_counter()
            try:
                if not expert.loaded:
                    await asyncio.wait_for(_in_thread(expert.load, f"load-{name}"), self.load_timeout_s)
                t0 = time.perf_counter()
                timeout = self.timeout_for(name)
                result = await asyncio.wait_for(
                    _in_thread(lambda: run_cancellable(stop, expert.analyze, image, args), f"expert-{name}"), timeout
                )
            except asyncio.CancelledError:
                stop.set()  # nobody will read this result: the thread stops at its next check
                raise
            except asyncio.TimeoutError:
                stop.set()
                elapsed = (time.perf_counter() - t0) * 1000
                what = "loading" if not expert.loaded else "running"
                limit = self.load_timeout_s if not expert.loaded else self.timeout_for(name)
                return ExpertResult.failure(
                    image.image_id, name, args, f"timed out after {limit:g} s while {what}", elapsed
                )
            except VisionRouterError as exc:
                if isinstance(exc, EngineMissing):  # engine or weights absent: remembered, not tried again
                    self.registry.mark_unavailable(name, str(exc).removeprefix(f"{name}: "))
                return ExpertResult.failure(image.image_id, name, args, str(exc), (time.perf_counter() - t0) * 1000)
            except Exception as exc:  # an expert bug is an error line, not a failed request
                return ExpertResult.failure(
                    image.image_id,
                    name,
                    args,
                    f"{type(exc).__name__}: {exc}",
                    (time.perf_counter() - t0) * 1000,
                )
        self.cache.put(key, result)
        return result

    def _semaphore(self) -> asyncio.Semaphore:
        # One semaphore per event loop (the CLI runs a fresh loop per question).
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._sems.get(loop)
            if sem is None:
                sem = asyncio.Semaphore(self.max_concurrency)
                self._sems[loop] = sem
            return sem


async def _refined(
    expert: Any, shared: asyncio.Future[ExpertResult], parsed: Any, args: dict[str, Any]
) -> ExpertResult:
    """A caller's own result from a shared pass: a copy with its filter arguments applied."""
    # Shielded: one caller giving up must not cancel the pass the others wait for.
    base = await asyncio.shield(shared)
    if base.error:
        return base.model_copy(update={"args": args})
    try:
        result = expert.refine(base.model_copy(deep=True), parsed)
    except Exception as exc:  # an expert bug is an error line, not a failed request
        return ExpertResult.failure(base.image_id, expert.name, args, f"{type(exc).__name__}: {exc}")
    result.args = args
    return result


class _DaemonPool:
    """Reusable daemon worker threads. Unlike ThreadPoolExecutor (whose workers the interpreter joins
    at exit), a hung engine here never blocks exit; and a busy pool grows instead of queueing, so
    a hung expert never delays the next one."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()
        self._count = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._count += 1
                threading.Thread(target=self._work, name=f"vision-expert-{self._count}", daemon=True).start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            job()
            with self._lock:
                self._idle += 1


_POOL = _DaemonPool()


def _in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` on a daemon worker thread; the returned future completes on the calling loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def job() -> None:
        try:
            value = fn()
        except BaseException as exc:  # delivered to the awaiting coroutine
            try:
                loop.call_soon_threadsafe(settle, None, exc)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass
            return
        try:
            loop.call_soon_threadsafe(settle, value, None)
        except RuntimeError:
            pass

    _POOL.submit(job)
    return fut


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]

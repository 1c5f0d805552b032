"""Stopping an expert run that nobody waits for any more.

A run that times out (or whose request went away) cannot be killed: it is a thread inside an engine. It
can stop itself, though, between the steps of its work: the dispatcher runs each analysis inside
:func:`run_cancellable` with a :class:`threading.Event`, sets the event when it gives up on the run, and the
expert's pipeline calls :func:`check_cancelled` between steps, which raises :class:`Cancelled` once the event
is set. A step already inside an engine (one OpenCV or ONNX Runtime call) finishes first, so experts keep
their steps short on big images (they work on a bounded working resolution).

Work that waits rather than computes (a remote expert waiting for its service's answer) registers
:func:`on_cancel` instead: the callback runs the moment the run is given up on, and closes the connection,
which tells the service to stop its own run (``experts.service`` watches for the client leaving).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from experts.errors import ExpertError

T = TypeVar("T")

_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("vision_expert_stop", default=None)


class Cancelled(ExpertError):
    """The run was given up on (timed out, or its request went away) and stopped between two steps."""


def run_cancellable(stop: threading.Event, fn: Callable[..., T], *args: object) -> T:
    """Call ``fn(*args)`` in this thread with ``stop`` as its cancellation event: once ``stop`` is set,
    the next :func:`check_cancelled` inside ``fn`` raises :class:`Cancelled`."""
    token = _STOP.set(stop)
    try:
        return fn(*args)
    finally:
        _STOP.reset(token)


class StopSignal(threading.Event):
    """A cancellation event that also runs the :func:`on_cancel` callbacks of the run when it is set (with a
    plain :class:`threading.Event` they are noticed by polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callback_lock = threading.Lock()

    def set(self) -> None:
        with self._callback_lock:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once when set (now, when already set); returns what unregisters it."""
        with self._callback_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def _discard(self, callback: Callable[[], None]) -> None:
        with self._callback_lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@contextlib.contextmanager
def on_cancel(callback: Callable[[], None], poll_s: float = 0.05) -> Iterator[None]:
    """Within the block, call ``callback`` (once, from another thread) as soon as the current run is given up
    on: for work that blocks on something else (a socket) instead of reaching :func:`check_cancelled`.
    Outside :func:`run_cancellable` it does nothing."""
    stop = _STOP.get()
    if stop is None:
        yield
        return
    if isinstance(stop, StopSignal):
        remove = stop.add_callback(callback)
        try:
            yield
        finally:
            remove()
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if stop.is_set():
                callback()
                return

    threading.Thread(target=watch, name="vision-expert-cancel-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when the current run has been given up on; otherwise return at once.
    Outside :func:`run_cancellable` (a script calling ``analyze`` itself) it never raises."""
    stop = _STOP.get()
    if stop is not None and stop.is_set():
        raise Cancelled("cancelled: the run was given up on (timed out) and stopped")


def cancelled() -> bool:
    """Whether the current run has been given up on (for loops that clean up before stopping)."""
    stop = _STOP.get()
    return stop is not None and stop.is_set()


__all__ = ["Cancelled", "StopSignal", "cancelled", "check_cancelled", "on_cancel", "run_cancellable"]

"""Stopping an expert run that nobody waits for any more.

A run that times out (or whose request went away) cannot be killed: it is a thread inside an engine. It
can stop itself, though, between the steps of its work: the dispatcher runs each analysis inside
:func:`run_cancellable` with a :class:`threading.Event`, sets the event when it gives up on the run, and the
expert's pipeline calls :func:`check_cancelled` between steps, which raises :class:`Cancelled` once the event
is set. A step already inside an engine (one OpenCV or ONNX Runtime call) finishes first, so experts keep
their steps short on big images (they work on a bounded working resolution).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
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


__all__ = ["Cancelled", "cancelled", "check_cancelled", "run_cancellable"]

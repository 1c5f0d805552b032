"""The base of every labelled detector: what it finds, whether it can run, and its engines built once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from experts.schema import BBox, TextLine


class Backend:
    """One labelled detector. Subclasses set ``name``, ``labels`` and ``engine``, and implement
    :meth:`detect`; :meth:`available` says whether it can run here."""

    name: ClassVar[str] = ""
    #: The canonical labels it finds (see experts/detect/labels.py).
    labels: ClassVar[tuple[str, ...]] = ()
    #: What runs, in words (shown by `expert list` and the expert's status).
    engine: ClassVar[str] = ""
    #: A learned model (weights), rather than a hand-made feature detector.
    learned: ClassVar[bool] = False

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._build_lock = threading.Lock()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether this backend can run here and, when not, why (cheap: imports no engine)."""
        return True, ""

    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        """Boxes of ``label`` in the BGR image; decoded payloads (codes) are appended to ``texts``."""
        raise NotImplementedError

    def _get(self, key: str, build: Callable[[], Any]) -> tuple[Any, threading.Lock]:
        """The engine object ``key``, built once per backend instance (thread-safe), and the lock that
        serialises calls on it: OpenCV's detectors and interpreters keep scratch state."""
        obj = self._built.get(key)
        if obj is None:
            with self._build_lock:
                obj = self._built.get(key)
                if obj is None:
                    obj = build()
                    self._locks[key] = threading.Lock()
                    self._built[key] = obj
        return obj, self._locks[key]

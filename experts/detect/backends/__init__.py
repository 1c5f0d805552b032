"""Labelled detectors: a small registry of backends, each serving some labels.

A backend says which labels it finds, whether it can run here (without importing a heavy engine), and
how it finds them. For each label the expert uses the first registered backend that can run, so a learned
detector registered ahead of an OpenCV one takes over when its extra is installed and the OpenCV one stays
the fallback. A new label (or a better detector for an old one) is one more backend: subclass
:class:`Backend` and pass it to :func:`register`.
"""

from __future__ import annotations

from experts.detect.backends.base import Backend
from experts.detect.backends.blaze import BlazeBackend
from experts.detect.backends.codes import BarcodeBackend, QrBackend
from experts.detect.backends.haar import HaarBackend
from experts.detect.backends.hog import HogBackend
from experts.detect.backends.ssd import SsdBackend

#: Registered backends, in order of preference for each label.
BACKENDS: list[type[Backend]] = []


def register(cls: type[Backend], *, first: bool = False) -> type[Backend]:
    """Add a backend (``first``: ahead of those already registered, e.g. a better detector for a label)."""
    if cls in BACKENDS:
        return cls
    if first:
        BACKENDS.insert(0, cls)
    else:
        BACKENDS.append(cls)
    return cls


def candidates(label: str) -> list[type[Backend]]:
    """Every registered backend for ``label``, preferred first."""
    return [b for b in BACKENDS if label in b.labels]


def choose(label: str, learned: bool = True) -> type[Backend] | None:
    """The backend that runs for ``label`` here: the first registered one that is available (``learned``
    False: the first that is not a learned model, e.g. to compare with OpenCV's detectors)."""
    for b in candidates(label):
        if (learned or not b.learned) and b.available()[0]:
            return b
    return None


# Learned detectors first: where their extra is installed they serve their labels; OpenCV's are the fallback.
for _cls in (SsdBackend, BlazeBackend, HaarBackend, HogBackend, QrBackend, BarcodeBackend):
    register(_cls)

__all__ = ["BACKENDS", "Backend", "candidates", "choose", "register"]

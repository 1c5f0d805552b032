"""OpenCV's HOG people detector (the default Dalal-Triggs SVM): upright, full-body pedestrians."""

from __future__ import annotations

import cv2
import numpy as np

from experts.detect.backends.base import Backend
from experts.detect.boxes import downscale, squash, with_weights
from experts.schema import BBox, TextLine


class HogBackend(Backend):
    """Upright standing or walking people, at least about 64x128 px (the HOG window)."""

    name = "hog"
    labels = ("person",)
    engine = "OpenCV HOG people detector"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not hasattr(cv2, "HOGDescriptor"):
            return False, "this OpenCV build has no HOGDescriptor (OpenCV 5)"
        return True, ""

    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        def build() -> cv2.HOGDescriptor:
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
            return hog

        hog, lock = self._get("hog_people", build)
        small, scale = downscale(bgr, 1024)
        with lock:
            rects, weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
        out = []
        for (x, y, rw, rh), wt in with_weights(rects, weights):
            if float(wt) < 0.3:  # below this the SVM margin is mostly background
                continue
            out.append(
                BBox(
                    label="person",
                    x1=round(x / scale, 1),
                    y1=round(y / scale, 1),
                    x2=round((x + rw) / scale, 1),
                    y2=round((y + rh) / scale, 1),
                    score=squash(float(wt) * 2.0),
                )
            )
        return out

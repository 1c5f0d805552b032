"""OpenCV's QR code and barcode detectors; the decoded payloads become text lines."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from experts.cancel import check_cancelled
from experts.detect.backends.base import Backend
from experts.detect.boxes import quad_box, text_line
from experts.errors import EngineMissing
from experts.schema import BBox, TextLine

# Above this many pixels the barcode search skips its 1.5x upscaled try.
UPSCALE_MAX_PIXELS = 12_000_000


class QrBackend(Backend):
    """QR codes, several per image, with their contents."""

    name = "qr"
    labels = ("qr",)
    engine = "OpenCV QRCodeDetector"

    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        det, lock = self._get("qr", cv2.QRCodeDetector)
        with lock:
            try:
                ok, payloads, points, _ = det.detectAndDecodeMulti(bgr)
            except cv2.error:
                ok, payloads, points = False, (), None
            if not ok or points is None:
                payload, pts, _ = det.detectAndDecode(bgr)
                ok = pts is not None
                payloads, points = ((payload,), pts) if ok else ((), None)
        boxes: list[BBox] = []
        if points is None:
            return boxes
        for payload, quad in zip(payloads, np.asarray(points, dtype=float).reshape(-1, 4, 2), strict=False):
            boxes.append(quad_box("qr", quad))
            if payload:
                texts.append(text_line(payload, quad))
        return boxes


def _barcode_detector() -> Any:
    if hasattr(cv2, "barcode") and hasattr(cv2.barcode, "BarcodeDetector"):
        return cv2.barcode.BarcodeDetector()
    if hasattr(cv2, "barcode_BarcodeDetector"):
        return cv2.barcode_BarcodeDetector()
    raise EngineMissing("detect: this OpenCV build has no BarcodeDetector (OpenCV >= 4.8 has)")


class BarcodeBackend(Backend):
    """1-D barcodes (EAN, UPC, ...) with their contents."""

    name = "barcode"
    labels = ("barcode",)
    engine = "OpenCV BarcodeDetector"

    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        det, lock = self._get("barcode", _barcode_detector)
        # OpenCV's barcode detector only locks on within a band of bar widths: try a few scales.
        ok, infos, points, scale = False, (), None, 1.0
        for scale in (1.0, 0.66, 0.5, 0.33, 1.5):
            check_cancelled()
            if scale > 1.0 and bgr.shape[0] * bgr.shape[1] > UPSCALE_MAX_PIXELS:
                continue  # a big photo has big bars already; its 1.5x copy alone was 330 MB at 49 MP
            img = (
                bgr
                if scale == 1.0
                else cv2.resize(
                    bgr,
                    None,
                    fx=scale,
                    fy=scale,
                    interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                )
            )
            with lock:
                res = det.detectAndDecodeWithType(img)
            ok, infos, points = res[0], res[1], res[3]
            if ok and points is not None and any(infos):
                break
        boxes: list[BBox] = []
        if not ok or points is None:
            return boxes
        for payload, quad in zip(infos, np.asarray(points, dtype=float).reshape(-1, 4, 2) / scale, strict=False):
            boxes.append(quad_box("barcode", quad))
            if payload:
                texts.append(text_line(payload, quad))
        return boxes

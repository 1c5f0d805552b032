"""Box helpers shared by the labelled backends: non-maximum suppression, OpenCV's rectangles with
their weights, scores, downscaling, and boxes and text lines from a detector's quadrilaterals."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from experts.schema import BBox, TextLine


def nms(boxes: list[BBox], iou_threshold: float = 0.3) -> list[BBox]:
    """Non-maximum suppression: keep the best-scored box among those overlapping by more than
    ``iou_threshold`` (IoU), or when one of two boxes lies almost wholly inside the other."""
    order = sorted(boxes, key=lambda b: -(b.score if b.score is not None else 0.0))
    kept: list[BBox] = []
    for b in order:
        area_b = max(b.x2 - b.x1, 0) * max(b.y2 - b.y1, 0)
        suppressed = False
        for k in kept:
            iw = max(0.0, min(b.x2, k.x2) - max(b.x1, k.x1))
            ih = max(0.0, min(b.y2, k.y2) - max(b.y1, k.y1))
            inter = iw * ih
            area_k = max(k.x2 - k.x1, 0) * max(k.y2 - k.y1, 0)
            union = area_b + area_k - inter
            if (union and inter / union > iou_threshold) or inter > 0.8 * max(min(area_b, area_k), 1e-9):
                suppressed = True
                break
        if not suppressed:
            kept.append(b)
    return sorted(kept, key=lambda b: (b.y1, b.x1))


def with_weights(rects: Any, weights: Any) -> list[tuple[np.ndarray, float]]:
    """Pair OpenCV's detection rectangles with their weights (both empty tuples when none)."""
    if not len(rects):
        return []
    return list(zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=False))


def squash(weight: float) -> float:
    """Map a detector's raw margin to 0..1 (monotone, not a calibrated probability)."""
    return round(1.0 / (1.0 + math.exp(-weight)), 4)


def downscale(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image with its longer side at most ``max_side`` (area-averaged), and the scale applied."""
    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_side:
        return img, 1.0
    scale = max_side / s
    return cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA), scale


def quad_box(label: str, quad: np.ndarray) -> BBox:
    """The upright box around a detector's quadrilateral (4 x 2 points)."""
    return BBox(
        label=label,
        x1=round(float(quad[:, 0].min()), 1),
        y1=round(float(quad[:, 1].min()), 1),
        x2=round(float(quad[:, 0].max()), 1),
        y2=round(float(quad[:, 1].max()), 1),
    )


def text_line(payload: str, quad: np.ndarray) -> TextLine:
    """A decoded code's payload as a text line at its quadrilateral."""
    return TextLine(
        text=payload,
        score=1.0,
        box=[[round(float(x), 1), round(float(y), 1)] for x, y in quad],
        bbox=[
            round(float(quad[:, 0].min()), 1),
            round(float(quad[:, 1].min()), 1),
            round(float(quad[:, 0].max()), 1),
            round(float(quad[:, 1].max()), 1),
        ],
    )

"""Measurements: one object's size, share, aspect, shape, colour and centre; the image's own facts
(resolution, aspect, orientation, DPI and physical size)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from experts.detect.shapes import classify_shape, colour_name
from experts.images import DecodedImage


def measure_object(c: np.ndarray, rgb: np.ndarray, image_area: float) -> dict[str, Any]:
    """One object's box, pixel area, share, aspect, shape, colour and centre."""
    x, y, bw, bh = cv2.boundingRect(c)
    shape, vertices = classify_shape(c)
    obj_mask = np.zeros((bh, bw), np.uint8)
    cv2.drawContours(obj_mask, [c - [x, y]], -1, 255, thickness=cv2.FILLED)
    area = float(cv2.countNonZero(obj_mask))  # pixels covered, not the polygon's smaller area
    # Erode so anti-aliased edges do not tint the colour.
    inner = cv2.erode(obj_mask, np.ones((5, 5), np.uint8)) if min(bw, bh) > 12 else obj_mask
    pixels = rgb[y : y + bh, x : x + bw][inner > 0]
    mean = np.median(pixels, axis=0) if len(pixels) else np.zeros(3)
    m = cv2.moments(c)
    cx = m["m10"] / m["m00"] if m["m00"] else x + bw / 2
    cy = m["m01"] / m["m00"] if m["m00"] else y + bh / 2
    return {
        "shape": shape,
        "vertices": vertices,
        "bbox": [x, y, x + bw, y + bh],
        "width": bw,
        "height": bh,
        "area": round(area, 1),
        "share": round(area / image_area, 5),
        "aspect_ratio": round(bw / bh, 3) if bh else None,
        "colour": colour_name(tuple(mean)),
        "rgb": [int(v) for v in mean],
        "centre": [round(cx, 1), round(cy, 1)],
    }


def image_facts(image: DecodedImage) -> dict[str, Any]:
    """Resolution, aspect, orientation and, when the file carries it, DPI and physical size."""
    w, h = image.width, image.height
    g = math.gcd(w, h)
    facts: dict[str, Any] = {
        "width": w,
        "height": h,
        "pixels": w * h,
        "megapixels": round(w * h / 1e6, 3),
        "aspect_ratio": round(w / h, 4),
        "aspect": f"{w // g}:{h // g}",
        "orientation": "landscape" if w > h else ("portrait" if h > w else "square"),
        # PNG stores pixels per metre: 300 dpi comes back as 299.9994.
        "dpi": [round(d, 2) for d in image.dpi] if image.dpi else None,
    }
    if image.dpi and image.dpi[0] > 0 and image.dpi[1] > 0:
        facts["size_inches"] = [round(w / image.dpi[0], 3), round(h / image.dpi[1], 3)]
        facts["size_mm"] = [round(w / image.dpi[0] * 25.4, 1), round(h / image.dpi[1] * 25.4, 1)]
    return facts

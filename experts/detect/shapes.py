"""What an object looks like: its shape class from its outline, and a plain colour name."""

from __future__ import annotations

import math

import cv2
import numpy as np


def classify_shape(contour: np.ndarray) -> tuple[str, int]:
    """Shape class (triangle, square, rectangle, circle, ellipse, polygon) and vertex count."""
    peri = cv2.arcLength(contour, True)
    area = cv2.contourArea(contour)
    approx = cv2.approxPolyDP(contour, 0.02 * peri, True)
    n = len(approx)
    circularity = 4 * math.pi * area / (peri * peri) if peri else 0.0
    (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
    side_ratio = min(rw, rh) / max(rw, rh) if max(rw, rh) else 0.0
    if n == 3:
        return "triangle", 3
    if n == 4:
        fill = area / (rw * rh) if rw * rh else 0.0
        if fill > 0.85:
            return ("square" if side_ratio >= 0.9 else "rectangle"), 4
        return "quadrilateral", 4
    if circularity > 0.8 and n >= 6:
        return ("circle" if side_ratio >= 0.9 else "ellipse"), n
    if n >= 6 and side_ratio < 0.9:
        # Ellipses: their area matches pi*a*b of the fitted rectangle.
        if rw * rh and abs(area / (math.pi * rw * rh / 4) - 1) < 0.06:
            return "ellipse", n
    return "polygon", n


_COLOUR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


def colour_name(rgb: tuple[float, float, float]) -> str:
    """A plain colour name for an RGB triple (hue bins for saturated colours; black/grey/white else)."""
    pixel = np.uint8([[list(map(lambda v: int(round(v)), rgb))]])
    hch, s, v = (int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_RGB2HSV)[0, 0])
    hue = hch * 2  # OpenCV hue is 0..179
    if v < 50:
        return "black"
    if s < 45:
        return "white" if v > 200 else ("grey" if v > 90 else "black")
    if hue < 15 or hue >= 340:
        name = "red"
    elif hue < 40:
        name = "orange" if v > 150 or s < 200 else "brown"
    elif hue < 70:
        name = "yellow"
    elif hue < 165:
        name = "green"
    elif hue < 195:
        name = "cyan"
    elif hue < 255:
        name = "blue"
    elif hue < 295:
        name = "purple"
    else:
        name = "pink"
    if name in ("orange", "red") and v < 110:
        name = "brown"
    return name

"""The background of a photo, scan or product shot, modelled so that objects stand out from it.

A smooth surface fitted from the picture's border inwards, with a local correction for patchy light; the
foreground is what differs from it (an adaptive threshold). Busy scenes with no plain backdrop are split
by lightness instead."""

from __future__ import annotations

import cv2
import numpy as np

from experts.detect.boxes import downscale


def _quadratic_design(h: int, w: int) -> np.ndarray:
    """Columns 1, x, y, x², xy, y² over an h x w grid (coordinates scaled to 0..1)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = xx / max(w - 1, 1), yy / max(h - 1, 1)
    return np.stack([np.ones_like(xn), xn, yn, xn * xn, xn * yn, yn * yn], axis=-1)


def _robust_keep(resid: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Background pixels: residual within 3 robust sigmas of those now taken for background (at least 6 Lab)."""
    mad = float(np.median(resid[keep])) + 1e-3 if keep.any() else 6.0
    return resid < max(3.0 * 1.4826 * mad, 6.0)


def _lab_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between two Lab images (or pixel lists), channel last, as float32."""
    d = np.subtract(a, b, dtype=np.float32)
    return np.sqrt(np.einsum("...c,...c->...", d, d))


def background_model(lab: np.ndarray) -> tuple[np.ndarray, float]:
    """The background's Lab colour at every pixel, for lit scenes, product shots and dark tables alike.

    First a smooth quadratic surface per channel, fitted robustly from the picture's border inwards: the
    border is the one place a subject rarely fills, so a subject covering most of the frame stays an
    outlier instead of becoming the background. Then a local correction (normalised convolution of the
    pixels taken for background, about an eighth of the image wide) follows what a quadratic cannot:
    the patchy light of a photographed table. Where no background is near (inside a large object) the
    quadratic surface stands. Also returns the border's median distance from the surface (Lab units):
    small for a table, a wall or a page, large where the picture's edge is a busy scene."""
    small, _ = downscale(lab, 200)
    sh, sw = small.shape[:2]
    design = _quadratic_design(sh, sw)
    flat_d, values = design.reshape(-1, 6), small.reshape(-1, 3)
    band = max(2, int(round(min(sh, sw) * 0.04)))
    keep = np.zeros((sh, sw), bool)
    keep[:band], keep[-band:], keep[:, :band], keep[:, -band:] = True, True, True, True
    keep = ring = keep.reshape(-1)
    coef = np.zeros((6, 3), np.float32)
    every = np.zeros(len(values), bool)
    every[::3] = True  # a third of the pixels pins six coefficients down as well as all of them
    for _ in range(5):
        a, b = flat_d[keep & every], values[keep & every]
        # Normal equations: a 6x6 solve, where lstsq's SVD costs ten times more.
        coef = np.linalg.solve(a.T @ a + 1e-6 * np.eye(6, dtype=np.float32), a.T @ b)
        keep = _robust_keep(_lab_distance(values, flat_d @ coef), keep)
    quad = (flat_d @ coef).reshape(sh, sw, 3).astype(np.float32)
    clutter = float(np.median(_lab_distance(values[ring], quad.reshape(-1, 3)[ring])))
    keep2 = keep.reshape(sh, sw)
    # stackBlur (a fast near-Gaussian) about an eighth of the image wide.
    k = int(max(sh, sw) / 8.0 * 2.5) | 1
    bg = quad
    for _ in range(2):
        # Pixels next to an object carry its blurred edge: leave them out of the local estimate.
        weight = cv2.erode(keep2.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
        num = cv2.stackBlur(small * weight[..., None], (k, k))
        den = cv2.stackBlur(weight, (k, k))[..., None]
        bg = (num + 0.02 * quad) / (den + 0.02)
        resid = _lab_distance(small, bg)
        keep2 = _robust_keep(resid, keep2)
    h, w = lab.shape[:2]
    if (sh, sw) != (h, w):
        bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)
    return bg, clutter


def foreground_mask(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels that differ from the (possibly unevenly lit) background: the mask and the distance image."""
    mask, dist, _ink, _cluttered = foreground(bgr)
    return mask, dist


# A border further than this (median, Lab units) from any smooth surface is a busy scene, not a backdrop:
# skimage's cameraman measures 26, its cat 24, coffee table 36, astronaut 50; coins 9.8, pages and walls < 6.
CLUTTERED_BORDER = 18.0


def foreground(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The object mask, the distance from the background (Lab units), the unsmoothed ink mask, and
    whether the scene is cluttered (no plain background to measure against).

    The distance from :func:`background_model` is thresholded with Otsu, with a floor so a plain image
    has no objects; a local background makes this an adaptive threshold. The ink mask is the same
    threshold on the unblurred image, without morphology: letters keep their counters and thin strokes.
    In a cluttered scene the local background would follow the subject itself; there the image is split
    in two by Otsu on lightness, and the side that holds less of the border is the foreground."""
    h, w = bgr.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(bgr, (5, 5), 0), cv2.COLOR_BGR2LAB).astype(np.float32)
    bg, clutter = background_model(lab)
    if clutter > CLUTTERED_BORDER:
        mask, dist, ink = _two_sided(lab, cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB))
        return _clean(mask), dist, ink, True
    dist = _lab_distance(lab, bg)
    dist8 = np.clip(dist * 2.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(dist8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Floor: noise of a few Lab units must never count (about 12 Lab units).
    thresh = max(float(otsu), 24.0)
    mask = (dist8 > thresh).astype(np.uint8) * 255
    sharp = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    ink = (_lab_distance(sharp, bg) > thresh / 2.0).astype(np.uint8) * 255
    return _clean(mask), dist, ink, False


def _clean(mask: np.ndarray) -> np.ndarray:
    """Opening detaches specks and thin noise from objects; closing heals small gaps in them."""
    h, w = mask.shape[:2]
    k = max(3 if min(h, w) < 300 else 5, int(round(min(h, w) / 150)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)


def _two_sided(lab: np.ndarray, sharp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Otsu on lightness: the side holding less of the picture's border is the foreground. The distance is
    lightness away from the background side's median, so outlines are redrawn at half an object's contrast."""
    light = np.clip(lab[:, :, 0], 0, 255).astype(np.uint8)
    level, bright = cv2.threshold(light, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    fg_bright = float(border.mean()) < 127.5  # the border is mostly dark: the bright side is the subject
    mask = bright if fg_bright else 255 - bright
    bg_level = float(np.median(lab[:, :, 0][mask == 0])) if (mask == 0).any() else float(level)
    dist = np.abs(lab[:, :, 0] - bg_level)
    sharp_l = sharp[:, :, 0]
    ink = ((sharp_l > level) if fg_bright else (sharp_l <= level)).astype(np.uint8) * 255
    return mask, dist, ink

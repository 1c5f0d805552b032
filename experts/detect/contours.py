"""Objects from outlines: foreground parts become objects; text-like marks are told apart, touching round
objects split, pieces of one object (a rim, a label) joined, and each outline redrawn at its own contrast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from experts.cancel import check_cancelled
from experts.detect.background import foreground
from experts.detect.measure import measure_object


@dataclass
class ContourFindings:
    """What the contour analysis saw: shape objects (largest first) and text-like marks."""

    objects: list[dict[str, Any]]
    marks: list[list[int]] = field(default_factory=list)  # boxes of text-like marks, when the image reads as text
    cluttered: bool = False  # no plain background: the objects are the image's main light/dark regions

    @property
    def marks_box(self) -> list[int] | None:
        """The box around every text-like mark."""
        if not self.marks:
            return None
        a = np.asarray(self.marks)
        return [int(a[:, 0].min()), int(a[:, 1].min()), int(a[:, 2].max()), int(a[:, 3].max())]


# Text reads as marks, not shapes. Ink covers a small part of a word's or a pen stroke's convex hull (median
# 0.51 on skimage's page, 0.62 on its handwriting) but most of a coin's, a cup's or a drawn shape's (0.9-1.0).
# An image reads as text when it has at least 8 small parts and their median ink share is below 0.67; then
# every small part (< 5% of the image) and every sparse one is a mark.
TEXT_INK_SHARE = 0.67
MARK_INK_SHARE = 0.85
BIG_MARK_INK_SHARE = 0.5
MIN_MARKS_FOR_TEXT = 8
# Longest side the contour analysis works on; bigger images are analysed on a downscaled view and the
# findings mapped back (to_original): the analysis holds float copies of the picture (2.2 GB at 49 MP).
CONTOUR_MAX_SIDE = 2048
CLUTTERED_MIN_SHARE = 0.005  # smallest object in a busy scene (share of the image)
SMALL_PART_SHARE = 0.05


def find_objects(bgr: np.ndarray, min_area_share: float = 0.0005) -> list[dict[str, Any]]:
    """Every significant shape object in the image, largest first, with its measurements."""
    return analyse(bgr, min_area_share).objects


def analyse(bgr: np.ndarray, min_area_share: float = 0.0005) -> ContourFindings:
    """Objects and text-like marks: foreground against the local background, text told apart by its
    sparse ink, touching objects split apart (watershed on the distance transform), parts nested in a
    larger object merged into it."""
    h, w = bgr.shape[:2]
    image_area = float(h * w)
    mask, dist, ink, cluttered = foreground(bgr)
    check_cancelled()  # between steps: a run given up on stops here (experts.cancel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # In a busy scene small regions are texture (fur, wood grain, grass), not objects.
    min_area = max((CLUTTERED_MIN_SHARE if cluttered else min_area_share) * image_area, 16.0)
    parts = [c for c in contours if cv2.contourArea(c) >= min_area]
    marks = text_marks(parts, ink, image_area)
    pieces: list[np.ndarray] = []
    for i, c in enumerate(parts):
        if i not in marks:
            check_cancelled()
            pieces.extend(split_touching(c, min_area, ink, min_area_share * image_area))
    outlines = []
    for c in (r for p in pieces for r in _refine(p, dist, h, w)):
        check_cancelled()
        if cv2.contourArea(c) < min_area:
            continue
        x, y, bw, bh = cv2.boundingRect(c)
        if bw * bh >= 0.98 * image_area:  # the frame of the picture itself
            continue
        outlines.append(c)
    if not cluttered:
        outlines = join_across_bands(outlines, dist, ink, mask)
    rgb = bgr[:, :, ::-1]
    check_cancelled()
    found = [measure_object(c, rgb, image_area) for c in merge_nested(outlines, h, w)]
    found.sort(key=lambda o: -o["area"])
    for i, o in enumerate(found, 1):
        o["id"] = i
    mark_boxes = []
    for i in sorted(marks):
        x, y, bw, bh = cv2.boundingRect(parts[i])
        mark_boxes.append([x, y, x + bw, y + bh])
    return ContourFindings(found, mark_boxes, cluttered)


def to_original(found: ContourFindings, fx: float, fy: float) -> None:
    """Map findings made on a downscaled working copy back to the original image's pixels (``fx``, ``fy``:
    original size / working size per axis). Shares, shapes and colours do not change with scale."""
    for o in found.objects:
        x1, y1, x2, y2 = o["bbox"]
        o["bbox"] = [round(x1 * fx), round(y1 * fy), round(x2 * fx), round(y2 * fy)]
        o["width"], o["height"] = o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]
        o["area"] = round(o["area"] * fx * fy, 1)
        o["aspect_ratio"] = round(o["width"] / o["height"], 3) if o["height"] else None
        o["centre"] = [round(o["centre"][0] * fx, 1), round(o["centre"][1] * fy, 1)]
    found.marks = [[round(x1 * fx), round(y1 * fy), round(x2 * fx), round(y2 * fy)] for x1, y1, x2, y2 in found.marks]


def text_marks(parts: list[np.ndarray], ink: np.ndarray, image_area: float) -> set[int]:
    """Indexes of the parts that are text-like marks (none unless the image reads as text)."""
    small, share = [], {}
    for i, c in enumerate(parts):
        x, y, bw, bh = cv2.boundingRect(c)
        hull = np.zeros((bh, bw), np.uint8)
        cv2.drawContours(hull, [cv2.convexHull(c) - [x, y]], -1, 255, thickness=cv2.FILLED)
        share[i] = cv2.countNonZero(hull & ink[y : y + bh, x : x + bw]) / max(cv2.countNonZero(hull), 1)
        if cv2.contourArea(c) < SMALL_PART_SHARE * image_area:
            small.append(i)
    if len(small) < MIN_MARKS_FOR_TEXT or float(np.median([share[i] for i in small])) >= TEXT_INK_SHARE:
        return set()
    # A large part is a mark only when very sparse (a scrawl); a product whose label splits its outline
    # is large and mostly solid, even with its shadow.
    return set(small) | {i for i, s in share.items() if s < (MARK_INK_SHARE if i in small else BIG_MARK_INK_SHARE)}


# must be this convex (coins, cups, pebbles, tiles); a horse's legs or a hand's fingers stay one object.
SPLIT_MIN_SOLIDITY = 0.85
# Two bumps of the distance map are two objects when the neck between them is at most this share of the
# smaller one's height (its radius): coins or tablets that touch meet in a neck a few pixels wide, the
# squares of a checkerboard at a corner; the lobes of one bean-shaped thing meet across most of their width.
SPLIT_NECK = 0.5
# A component this convex is one object (a coin, a cup): no split is tried. A heap of seven coins measures 0.93.
SPLIT_CONVEX = 0.97
SPLIT_LEVELS = 32  # distance levels at which the necks are read
SPLIT_MIN_RADIUS = 2.0  # bumps lower than this (pixels) are outline noise, not objects


def split_touching(
    contour: np.ndarray, min_area: float, mask: np.ndarray | None = None, min_hole: float | None = None
) -> list[np.ndarray]:
    """Touching objects apart: one core per bump of the distance-to-edge map whose neck to the others is
    narrow (see :func:`touching_cores`), every pixel of the component given to its nearest core.

    ``mask`` (the foreground the contour was traced on) keeps the background enclosed by a clump out of it:
    the white squares of a checkerboard, the gaps between coins in a heap; holes smaller than ``min_hole``
    (default ``min_area``) are specks inside an object and are filled. A convex component is one object; a
    split stands only when every part is convex and large enough."""
    area = cv2.contourArea(contour)
    hull = cv2.contourArea(cv2.convexHull(contour))
    if not hull or area / hull > SPLIT_CONVEX:
        return [contour]
    x, y, bw, bh = cv2.boundingRect(contour)
    comp = np.zeros((bh + 2, bw + 2), np.uint8)
    cv2.drawContours(comp, [contour - [x - 1, y - 1]], -1, 255, thickness=cv2.FILLED)
    if mask is not None:
        comp = _without_enclosed_background(comp, mask[y : y + bh, x : x + bw], min_hole or min_area)
    cores = touching_cores(cv2.distanceTransform(comp, cv2.DIST_L2, 5))
    n = int(cores.max())
    if n < 2:
        return [contour]
    # Every pixel goes to its nearest core: the cores reach almost to the necks, so the cut lies in them.
    _d, nearest = cv2.distanceTransformWithLabels(
        (cores == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    owner = np.zeros(int(nearest.max()) + 1, np.int32)
    owner[nearest[cores > 0]] = cores[cores > 0]
    labels = np.where(comp > 0, owner[nearest], 0)
    parts = []
    for k in range(1, n + 1):
        cs, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not cs:
            return [contour]
        c = max(cs, key=cv2.contourArea)
        a = cv2.contourArea(c)
        h_area = cv2.contourArea(cv2.convexHull(c))
        if a < min_area or not h_area or a / h_area < SPLIT_MIN_SOLIDITY:
            return [contour]
        parts.append(c + [x - 1, y - 1])
    return parts


def _without_enclosed_background(comp: np.ndarray, mask: np.ndarray, min_hole: float) -> np.ndarray:
    """The filled component (padded by one pixel) less the background it encloses, holes under
    ``min_hole`` pixels kept filled."""
    inner = comp[1:-1, 1:-1]
    holes = ((inner > 0) & (mask == 0)).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    big = np.zeros(n, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_hole
    out = comp.copy()
    out[1:-1, 1:-1][big[lab]] = 0
    return out


def _peaks(dt: np.ndarray, lab: np.ndarray, n: int, regions: list[int]) -> list[tuple[int, int]]:
    """The highest point (y, x) of each of ``regions`` of the label image ``lab`` (``n`` labels), in one
    pass over the image whatever the number of regions."""
    flat_lab, flat_dt = lab.ravel(), dt.ravel()
    top = np.full(n, -1.0, np.float32)
    np.maximum.at(top, flat_lab, flat_dt)
    at_top = np.flatnonzero(flat_dt == top[flat_lab])
    labels, first = np.unique(flat_lab[at_top], return_index=True)
    where = dict(zip(labels.tolist(), at_top[first].tolist(), strict=True))
    w = dt.shape[1]
    return [(where[r] // w, where[r] % w) for r in regions]


def touching_cores(dt: np.ndarray) -> np.ndarray:
    """The cores of the objects in one component's distance map, labelled 1..n (0 elsewhere; n < 2: one
    object).

    The map is cut at falling levels. A region holding no bump yet starts one, as high as its peak. Where
    regions meet at a level, the lower bump is a separate object when that level (the neck's half-width)
    is at most SPLIT_NECK of its height, else a knob of the higher one. An object's core is its region at
    the last level before it met another object. Unlike one cut at a share of the highest peak, this holds
    for objects of different sizes in one clump, and for a clump whose middle lies far from any edge."""
    cores = np.zeros(dt.shape, np.int32)
    top = float(dt.max())
    if top < SPLIT_MIN_RADIUS:
        return cores
    height: list[float] = []  # per bump: its peak
    point: list[tuple[int, int]] = []  # per bump: where its peak is (y, x)
    state: list[str] = []  # live (still growing), knob (part of a higher bump), done (a separate object)
    core_id: dict[int, int] = {}  # bump -> its label in ``cores`` once its core is fixed
    prev = None
    for level in np.linspace(top * 0.98, min(0.5, top / 2), SPLIT_LEVELS):
        n, lab = cv2.connectedComponents((dt >= level).astype(np.uint8), connectivity=8)
        members: dict[int, list[int]] = {}
        for i, (py, px) in enumerate(point):
            if state[i] != "knob":
                members.setdefault(int(lab[py, px]), []).append(i)
        fresh = [r for r in range(1, n) if r not in members]
        if fresh:  # regions with no bump yet: a new bump at each one's highest point
            for r, (py, px) in zip(fresh, _peaks(dt, lab, n, fresh), strict=True):
                height.append(float(dt[py, px]))
                point.append((py, px))
                state.append("live")
                members[r] = [len(point) - 1]
        for idx in members.values():
            live = sorted((i for i in idx if state[i] == "live"), key=lambda i: -height[i])
            if len(live) < 2:
                continue
            separate = [i for i in live[1:] if level <= SPLIT_NECK * height[i] and height[i] >= SPLIT_MIN_RADIUS]
            for i in live[1:]:
                state[i] = "done" if i in separate else "knob"
            # The winner keeps standing for its region (later bumps are compared with it); the cores of
            # the winner and the separate bumps are their regions at the level before they met.
            for i in [live[0], *separate] if separate and prev is not None else []:
                if i not in core_id:
                    core_id[i] = len(core_id) + 1
                    cores[prev == prev[point[i]]] = core_id[i]
        prev = lab
    return cores


NESTED_SHARE = 0.5  # a part at least half inside a larger object's convex hull belongs to it
# A small part (under a quarter of the object) this close to it (share of the object's longer side) is a
# piece of it cut off by a background-coloured band, like a white cup rim on a white page.
NEAR_GAP = 0.05
NEAR_AREA = 0.25


def merge_nested(outlines: list[np.ndarray], h: int, w: int) -> list[np.ndarray]:
    """Parts lying mostly inside a larger object's convex hull, or small and right next to it, join it (a
    white cup's inside and rim on a saucer, a label on a bottle): one thing, measured once."""
    groups: list[list[np.ndarray]] = []
    for c in sorted(outlines, key=cv2.contourArea, reverse=True):
        for g in groups:
            if _belongs(c, g):
                g.append(c)
                break
        else:
            groups.append([c])
    return [g[0] if len(g) == 1 else _join(g, h, w) for g in groups]


def _belongs(part: np.ndarray, group: list[np.ndarray]) -> bool:
    """Whether ``part`` is inside the group's hull (by half its pixels) or a small piece next to it."""
    gx, gy, gw, gh = cv2.boundingRect(np.vstack(group))
    px, py, pw, ph = cv2.boundingRect(part)
    reach = NEAR_GAP * max(gw, gh)
    if px > gx + gw + reach or gx > px + pw + reach or py > gy + gh + reach or gy > py + ph + reach:
        return False  # far apart: neither inside nor next to it
    x, y, bw, bh = cv2.boundingRect(np.vstack(group + [part]))
    own = np.zeros((bh, bw), np.uint8)
    cv2.drawContours(own, [part - [x, y]], -1, 255, thickness=cv2.FILLED)
    hull = np.zeros_like(own)
    cv2.drawContours(hull, [cv2.convexHull(np.vstack(group)) - [x, y]], -1, 255, thickness=cv2.FILLED)
    total = max(cv2.countNonZero(own), 1)
    if cv2.countNonZero(hull & own) >= NESTED_SHARE * total:
        return True
    if cv2.contourArea(part) > NEAR_AREA * sum(cv2.contourArea(c) for c in group):
        return False
    body = np.zeros_like(own)
    cv2.drawContours(body, [c - [x, y] for c in group], -1, 255, thickness=cv2.FILLED)
    gap = cv2.distanceTransform(255 - body, cv2.DIST_L2, 3)[own > 0].min()
    return float(gap) <= reach


def _join(parts: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """One outline around several parts: filled, closed over the gaps between them, holes filled."""
    x, y, bw, bh = cv2.boundingRect(np.vstack(parts))
    pad = max(3, int(NEAR_GAP * max(bw, bh))) + 2
    canvas = np.zeros((bh + 2 * pad, bw + 2 * pad), np.uint8)
    cv2.drawContours(canvas, [parts[0] - [x - pad, y - pad]], -1, 255, thickness=cv2.FILLED)
    for p in parts[1:]:
        part = np.zeros_like(canvas)
        cv2.drawContours(part, [p - [x - pad, y - pad]], -1, 255, thickness=cv2.FILLED)
        # Close exactly the band between this part and what is joined so far, no wider.
        gap = int(np.ceil(cv2.distanceTransform(255 - canvas, cv2.DIST_L2, 3)[part > 0].min()))
        canvas |= part
        if gap > 0:
            # A closing by a disc of radius gap + 1, from two distance transforms (any radius, same cost).
            grown = (cv2.distanceTransform(255 - canvas, cv2.DIST_L2, 3) <= gap + 1).astype(np.uint8) * 255
            canvas = (cv2.distanceTransform(grown, cv2.DIST_L2, 3) > gap + 1).astype(np.uint8) * 255
    cs, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    best = max(cs, key=cv2.contourArea) + [x - pad, y - pad]
    best[:, :, 0] = np.clip(best[:, :, 0], 0, w - 1)
    best[:, :, 1] = np.clip(best[:, :, 1], 0, h - 1)
    return best


MIN_OBJECT_CONTRAST = 12.0  # Lab units: faint smudges stay below, drawn or printed things above
# Share of an object's contrast its outline must climb per pixel: drawn shapes measure 0.18-0.25, a soft
# stain on a noisy background 0.065.
EDGE_SLOPE = 0.12
# Only faint objects face that test (stains measure 12-16 Lab units): a motion-blurred clock (67) or a cup's
# shaded inside (104) has a soft edge and is still a thing.
STAIN_LEVEL = 30.0


def _refine(contour: np.ndarray, dist: np.ndarray, h: int, w: int) -> list[np.ndarray]:
    """Redraw one object's outline at half its own contrast.

    One global threshold shrinks low-contrast objects (a yellow square on white loses a pixel all round)
    and grows high-contrast ones; each object's edge is where the image is halfway between background
    and that object. Objects whose inside barely differs from the background (stains) are dropped. A part
    that the redrawing cuts in two (two halves of a product joined only by their shadow) stays two outlines;
    crumbs under a fifth of the largest go."""
    x, y, bw, bh = cv2.boundingRect(contour)
    pad = 4
    x0, y0, x1, y1 = max(x - pad, 0), max(y - pad, 0), min(x + bw + pad, w), min(y + bh + pad, h)
    comp = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.drawContours(comp, [contour - [x0, y0]], -1, 255, thickness=cv2.FILLED)
    inner = cv2.erode(comp, np.ones((5, 5), np.uint8))
    region = dist[y0:y1, x0:x1]
    core = region[inner > 0] if inner.any() else region[comp > 0]
    if core.size == 0:
        return []
    level = float(np.median(core))
    if level < MIN_OBJECT_CONTRAST:
        return []
    near = cv2.dilate(comp, np.ones((3, 3), np.uint8))
    refined = ((region > 0.5 * level) & (near > 0)).astype(np.uint8) * 255
    refined = cv2.morphologyEx(refined, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # Every outline point (not just a rectangle's four corners) is needed for the edge test below.
    cs, _ = cv2.findContours(refined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not cs:
        return []
    best = max(cs, key=cv2.contourArea)
    others = [c + [x0, y0] for c in cs if c is not best and cv2.contourArea(c) >= 0.2 * cv2.contourArea(best)]
    # A thing has an edge; a stain or a patch of shadow fades out. Compare the slope across the
    # outline with the object's contrast: a sharp edge climbs a fifth of it per pixel, a stain far less.
    smooth = cv2.GaussianBlur(region, (5, 5), 0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    pts = best.reshape(-1, 2)
    # Points on the picture's border have no outside to compare with.
    gx_abs, gy_abs = pts[:, 0] + x0, pts[:, 1] + y0
    pts = pts[(gx_abs > 0) & (gy_abs > 0) & (gx_abs < w - 1) & (gy_abs < h - 1)]
    if len(pts) and level < STAIN_LEVEL:
        slope = float(np.median(np.hypot(gx[pts[:, 1], pts[:, 0]], gy[pts[:, 1], pts[:, 0]])))
        if slope < EDGE_SLOPE * level:
            return []
    return [best + [x0, y0], *others]


# Two large pieces stacked with a near-white band between them (a white label round a tin, a white cap on a
# bottle) are one object: their facing edges are straight, their sides line up, the band is no taller than
# the pieces, and something is there (print, or a faint difference from the background above its noise).
BAND_MIN_SHARE = 0.01  # pieces at least this share of the image
BAND_ALIGN = 0.06  # the pieces' sides line up within this share of their width
BAND_STRAIGHT = 0.7  # rows (columns) next to the band are on average this full across the piece
BAND_MAX_GAP = 1.5  # band height at most this many times the smaller piece's height
BAND_INK = 0.01  # print on the band: this share of its pixels
BAND_FAINT = 2.0  # or its median distance from the background this many times the background's


def join_across_bands(
    outlines: list[np.ndarray], dist: np.ndarray, ink: np.ndarray, mask: np.ndarray
) -> list[np.ndarray]:
    """Outlines with pairs cut apart by a near-white band joined into one, band included."""
    h, w = mask.shape[:2]
    bg = mask[::4, ::4] == 0
    noise = float(np.median(dist[::4, ::4][bg])) if bg.any() else 0.0
    # Ink on the plain background (grain, specks): print on a band must stand well above it.
    bg_ink = float((ink[::4, ::4][bg] > 0).mean()) if bg.any() else 0.0
    out = list(outlines)
    joined = True
    while joined:
        joined = False
        big = sorted((c for c in out if cv2.contourArea(c) >= BAND_MIN_SHARE * h * w), key=cv2.contourArea)
        for i, a in enumerate(big):
            for b in big[i + 1 :]:
                band = _band_between(a, b, dist, ink, (noise, bg_ink), h, w)
                if band is None:
                    continue
                canvas = np.zeros((h, w), np.uint8)
                cv2.drawContours(canvas, [a, b], -1, 255, thickness=cv2.FILLED)
                x0, y0, x1, y1 = band
                canvas[y0:y1, x0:x1] = 255
                cs, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                out = [c for c in out if c is not a and c is not b] + [max(cs, key=cv2.contourArea)]
                joined = True
                break
            if joined:
                break
    return out


def _band_between(
    a: np.ndarray, b: np.ndarray, dist: np.ndarray, ink: np.ndarray, background: tuple[float, float], h: int, w: int
) -> tuple[int, int, int, int] | None:
    """The band [x0, y0, x1, y1] between two pieces stacked one above the other or side by side, when it
    holds them together as one object (see join_across_bands); else None."""
    ra, rb = cv2.boundingRect(a), cv2.boundingRect(b)
    for axis in (1, 0):  # 1: one above the other; 0: side by side
        la, lb = ra[axis + 2], rb[axis + 2]
        (first, f_rect), (second, s_rect) = sorted(((a, ra), (b, rb)), key=lambda t: t[1][axis])
        gap0, gap1 = f_rect[axis] + f_rect[axis + 2], s_rect[axis]
        if gap1 <= gap0 or gap1 - gap0 > BAND_MAX_GAP * min(la, lb):
            continue
        o = 1 - axis  # the other axis: the edges' span
        lo, hi = max(ra[o], rb[o]), min(ra[o] + ra[o + 2], rb[o] + rb[o + 2])
        # One object cut by a band leaves two pieces of the same width: their sides line up.
        span = max(ra[o + 2], rb[o + 2])
        if abs(ra[o] - rb[o]) > BAND_ALIGN * span or abs(ra[o] + ra[o + 2] - rb[o] - rb[o + 2]) > BAND_ALIGN * span:
            continue
        if not (
            _straight(first, f_rect, axis, end=True, h=h, w=w) and _straight(second, s_rect, axis, end=False, h=h, w=w)
        ):
            continue
        box = (lo, gap0, hi, gap1) if axis == 1 else (gap0, lo, gap1, hi)
        # The evidence is read inside the band, clear of the pieces' anti-aliased edges.
        m = max(3, (gap1 - gap0) // 10)
        x0, y0, x1, y1 = (lo, gap0 + m, hi, gap1 - m) if axis == 1 else (gap0 + m, lo, gap1 - m, hi)
        region_d, region_i = dist[y0:y1, x0:x1], ink[y0:y1, x0:x1]
        if region_d.size == 0:
            continue
        noise, bg_ink = background
        printed = cv2.countNonZero(region_i) >= max(BAND_INK, BAND_FAINT * 2 * bg_ink) * region_i.size
        faint = float(np.median(region_d)) >= max(BAND_FAINT * noise, 1.0)
        if printed or faint:
            return box
    return None


def _straight(c: np.ndarray, rect: tuple[int, int, int, int], axis: int, end: bool, h: int, w: int) -> bool:
    """Whether the piece's edge facing the band (its far end along ``axis`` when ``end``, else its near end)
    is a straight cut: across the last fifth of the piece its rows (or columns) stay mostly full (print on the
    band can leave a few crumbs attached beyond the cut; they are not counted)."""
    x, y, bw, bh = rect
    piece = np.zeros((bh, bw), np.uint8)
    cv2.drawContours(piece, [c - [x, y]], -1, 255, thickness=cv2.FILLED)
    if axis == 0:
        piece = piece.T
    depth = max(3, piece.shape[0] // 5)
    rows = piece[-depth:] if end else piece[:depth]
    fill = (rows > 0).mean(axis=1)
    body = fill[fill >= 0.2]  # rows of the piece itself, not crumbs of print left on the cut
    # A cut keeps the piece's width up to the edge; a round end (a coin, a cup) narrows towards it.
    return len(body) >= 0.5 * len(fill) and float(body.mean()) >= BAND_STRAIGHT

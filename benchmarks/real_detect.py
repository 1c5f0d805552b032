"""The ``detect`` expert on real images, next to OpenCV's plain contour recipe, in one run.

The set (tests/data/real/detect/truth.json) is built in memory from photos and scans that ship inside
scikit-image (no download): coins, a horse silhouette, a clock, a coffee cup, the cameraman, a book
page and handwriting, plus real objects cut out of those photos and placed on white e-commerce canvases
(with shadow, uneven light, vignette and JPEG variants). Truth: counted by eye, boxes by eye or by
construction; truth.json says which for each image.

The raw engine is OpenCV at its defaults: grey image, one global Otsu threshold (``cv2.threshold`` with
``THRESH_OTSU``; inverted when the picture's border comes out white, i.e. objects darker than the
background), ``cv2.findContours`` with ``RETR_EXTERNAL``, and the expert's own minimum area (0.05% of the
image) so that both count the same things.

Per image: objects found (expert / raw / truth), count error, mean best-match box IoU over the true boxes,
the largest object's share of the image where the truth has one, and ms per image (each timed on the
same decoded image, interleaved, best of ``--repeats``).

    .venv/bin/python benchmarks/real_detect.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.detect import DetectExpert  # noqa: E402
from experts.images import DecodedImage, decode_image  # noqa: E402

TRUTH = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "detect" / "truth.json"
MIN_AREA_SHARE = 0.0005  # the expert's default: what counts as an object for both sides


@dataclass
class RealImage:
    """One real image with its truth: ``count`` objects, their ``boxes`` and, for products, ``share``."""

    name: str
    kind: str  # photo | text | product
    data: bytes
    count: int
    boxes: list[list[float]] = field(default_factory=list)
    share: float | None = None
    source: str = ""


# --- the set ---------------------------------------------------------------------------------------
def build_set() -> list[RealImage]:
    """Every image of truth.json, built from ``skimage.data`` (raises ImportError without scikit-image)."""
    from skimage import data as sk

    truth = json.loads(TRUTH.read_text(encoding="utf-8"))
    out: list[RealImage] = []
    for p in truth["photos"]:
        rgb = getattr(sk, p["name"])()
        if rgb.dtype == bool:
            rgb = rgb.astype(np.uint8) * 255
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        kind = "text" if p.get("text") else "photo"
        out.append(RealImage(p["name"], kind, _png(rgb), p["count"], p.get("boxes", []), None, p["source"]))
    for p in truth["products"]:
        rgb, masks = _product(sk, p)
        boxes, area = [], 0
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
            area = max(area, int(m.sum()))
        looks = p.get("look", [])
        blob = _jpeg(rgb, 75) if "jpeg" in looks else _png(rgb)
        share = round(area / float(rgb.shape[0] * rgb.shape[1]), 4)
        out.append(RealImage(p["name"], "product", blob, len(masks), boxes, share, p["source"]))
    return out


def _ellipse_mask(shape: tuple[int, int], ellipses: list[tuple[tuple[int, int], tuple[int, int]]]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for centre, axes in ellipses:
        cv2.ellipse(m, centre, axes, 0, 0, 360, 255, -1)
    return m


def _cutout(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def _product(sk: Any, p: dict[str, Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A white canvas with real cut-out objects on it; the truth masks of the pasted objects."""
    cw, ch = p["canvas"]
    canvas = np.full((ch, cw, 3), 255.0, np.float32)
    coins = np.stack([sk.coins()] * 3, axis=-1)
    cut = p["cutout"]
    # (object RGB, its mask, scale or None for "scale to the share", top-left or None for centred)
    pieces: list[tuple[np.ndarray, np.ndarray, float | None, tuple[int, int] | None]] = []
    if cut == "coffee":
        rgb = sk.coffee()
        mask = _ellipse_mask(rgb.shape[:2], [((278, 229), (203, 161)), ((291, 110), (119, 93))])
        pieces.append((*_cutout(rgb, mask), None, None))
    elif cut == "coffee-print":
        w, h = p["size"]
        rgb = cv2.resize(np.rot90(sk.coffee()), (w, h), interpolation=cv2.INTER_AREA)
        pieces.append((rgb, np.full((h, w), 255, np.uint8), 1.0, None))
    elif cut == "horse":
        mask = (~sk.horse()).astype(np.uint8) * 255
        rgb = np.zeros((*mask.shape, 3), np.uint8) + np.array([70, 50, 35], np.uint8)
        pieces.append((*_cutout(rgb, mask), None, None))
    elif cut == "coin":
        pieces.append((*_cutout(coins, _ellipse_mask(coins.shape[:2], [((347, 187), (32, 32))])), None, None))
    elif cut == "three-coins":
        for (cx, cy, r), scale, at in (
            ((347, 187, 32), 5.0, (80, 150)),
            ((335, 44, 29), 3.5, (560, 120)),
            ((46, 260, 28), 2.5, (820, 480)),
        ):
            pieces.append((*_cutout(coins, _ellipse_mask(coins.shape[:2], [((cx, cy), (r, r))])), scale, at))
    elif cut == "banded-jar":
        pieces.append((*_banded_jar(sk, p), 1.0, None))
    else:
        raise ValueError(f"unknown cutout {cut!r}")
    looks = p.get("look", [])
    masks = []
    for rgb, mask, scale, at in pieces:
        if scale is None:
            scale = float(np.sqrt(p["share"] * cw * ch / float((mask > 127).sum())))
        size = (int(round(mask.shape[1] * scale)), int(round(mask.shape[0] * scale)))
        obj = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC).astype(np.float32)
        alpha = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x0, y0 = at if at else ((cw - size[0]) // 2, (ch - size[1]) // 2)
        full = np.zeros((ch, cw), np.float32)
        full[y0 : y0 + size[1], x0 : x0 + size[0]] = alpha
        if "shadow" in looks:
            shift = np.roll(np.roll(full, 25, axis=0), 25, axis=1)
            shade = cv2.GaussianBlur(shift, (31, 31), 0) * 0.35
            canvas *= (1.0 - shade)[..., None]
        region = canvas[y0 : y0 + size[1], x0 : x0 + size[0]]
        a = alpha[..., None]
        canvas[y0 : y0 + size[1], x0 : x0 + size[0]] = a * np.clip(obj, 0, 255) + (1 - a) * region
        masks.append(full > 0.5)
    if "uneven" in looks:
        canvas *= np.linspace(1.0, 0.85, cw, dtype=np.float32)[None, :, None]
    if "vignette" in looks:
        yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
        r2 = ((xx - cw / 2) / (cw / 2)) ** 2 + ((yy - ch / 2) / (ch / 2)) ** 2
        canvas *= (1.0 - 0.1 * r2)[..., None]
    return np.clip(canvas, 0, 255).astype(np.uint8), masks


def _banded_jar(sk: Any, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A jar or tin: a body printed with the coffee photo, a near-white paper label band across its middle
    (skimage's book scan, its uneven light flattened, paper at ``paper`` grey), and a near-white cap (the
    cup's white porcelain rim). Returns the object's RGB and its mask (the whole silhouette)."""
    w, h = p["size"]
    cap_w, cap_h = p.get("cap", [0, 0])
    body = cv2.resize(np.ascontiguousarray(np.rot90(sk.coffee())), (w, h), interpolation=cv2.INTER_AREA)
    body = body.astype(np.float32)
    page = sk.page().astype(np.float32)
    # The scan's own paper level (closed over the print, blurred) divided out: white paper, real grain.
    level = cv2.GaussianBlur(cv2.morphologyEx(page, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8)), (0, 0), 8)
    paper = np.clip(page / np.maximum(level, 1.0) * float(p["paper"]), 0, 255)
    band_h = int(h * p["band"])
    label = cv2.resize(paper[30:130, 30:330], (w, band_h), interpolation=cv2.INTER_AREA)
    top = (h - band_h) // 2
    body[top : top + band_h] = label[..., None]
    obj = np.zeros((h + cap_h, w, 3), np.float32)
    mask = np.zeros((h + cap_h, w), np.uint8)
    obj[cap_h:], mask[cap_h:] = body, 255
    if cap_h:
        x0 = (w - cap_w) // 2
        rim = sk.coffee()[22:34, 225:375].astype(np.float32)  # the cup's white inner rim
        obj[:cap_h, x0 : x0 + cap_w] = cv2.resize(rim, (cap_w, cap_h), interpolation=cv2.INTER_CUBIC)
        mask[:cap_h, x0 : x0 + cap_w] = 255
    return obj, mask


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# --- the two sides ---------------------------------------------------------------------------------
def raw_engine(bgr: np.ndarray) -> list[list[float]]:
    """OpenCV's plain recipe: Otsu on grey, external contours, boxes of those above the minimum area."""
    h, w = bgr.shape[:2]
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    _, mask = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 127:  # the background came out white: the objects are the dark side
        mask = 255 - mask
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_area = MIN_AREA_SHARE * h * w
    boxes = []
    for c in contours:
        if cv2.contourArea(c) >= min_area:
            x, y, bw, bh = cv2.boundingRect(c)
            boxes.append([x, y, x + bw, y + bh])
    return boxes


def expert_boxes(expert: DetectExpert, image: DecodedImage, mode: str = "contours") -> tuple[list[list[float]], Any]:
    """The expert's object boxes (labelled shapes only) and its whole result."""
    r = expert.analyze(image, {"mode": mode})
    return [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox], r


# --- scoring ---------------------------------------------------------------------------------------
def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mean_best_iou(truth: list[list[float]], found: list[list[float]]) -> float | None:
    """For each true box the best IoU with any found box, averaged (None when there is no true box)."""
    if not truth:
        return None
    return float(np.mean([max((iou(t, f) for f in found), default=0.0) for t in truth]))


@dataclass
class Row:
    """One image's figures for both sides."""

    name: str
    kind: str
    truth: int
    expert_n: int
    raw_n: int
    expert_iou: float | None
    raw_iou: float | None
    expert_ms: float
    raw_ms: float
    truth_share: float | None = None
    expert_share: float | None = None
    text_marks: bool = False


def measure(images: list[RealImage] | None = None, repeats: int = 3) -> list[Row]:
    """Run both sides on every image (interleaved, best of ``repeats`` for time)."""
    images = build_set() if images is None else images
    expert = DetectExpert()
    rows = []
    for im in images:
        decoded = decode_image(im.data)
        bgr = decoded.bgr()
        mode = "measure" if im.kind == "product" else "contours"
        e_ms, r_ms = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            e_boxes, result = expert_boxes(expert, decoded, mode)
            t1 = time.perf_counter()
            r_boxes = raw_engine(bgr)
            t2 = time.perf_counter()
            e_ms.append((t1 - t0) * 1000)
            r_ms.append((t2 - t1) * 1000)
        objs = result.measurements.get("objects", [])
        rows.append(
            Row(
                name=im.name,
                kind=im.kind,
                truth=im.count,
                expert_n=int(result.measurements["count"]),
                raw_n=len(r_boxes),
                expert_iou=mean_best_iou(im.boxes, e_boxes),
                raw_iou=mean_best_iou(im.boxes, r_boxes),
                expert_ms=min(e_ms),
                raw_ms=min(r_ms),
                truth_share=im.share,
                expert_share=objs[0]["share"] if objs and im.share is not None else None,
                text_marks=result.attributes.get("content") == "text-like marks",
            )
        )
    return rows


def table(rows: list[Row]) -> list[str]:
    """The markdown table: per image and overall."""

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        "| image | kind | truth | expert n | raw n | expert IoU | raw IoU | share truth / expert "
        "| expert ms | raw ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n_e = f"{r.expert_n}" + (" + text-like marks" if r.text_marks else "")
        share = f"{f(r.truth_share, '{:.1%}')} / {f(r.expert_share, '{:.1%}')}" if r.truth_share else "-"
        lines.append(
            f"| {r.name} | {r.kind} | {r.truth} | {n_e} | {r.raw_n} | {f(r.expert_iou)} | {f(r.raw_iou)} "
            f"| {share} | {r.expert_ms:.0f} | {r.raw_ms:.1f} |"
        )
    e_err = np.mean([abs(r.expert_n - r.truth) for r in rows])
    r_err = np.mean([abs(r.raw_n - r.truth) for r in rows])
    e_hit = sum(r.expert_n == r.truth for r in rows)
    r_hit = sum(r.raw_n == r.truth for r in rows)
    e_iou = [r.expert_iou for r in rows if r.expert_iou is not None]
    r_iou = [r.raw_iou for r in rows if r.raw_iou is not None]
    lines.append(
        f"| **overall** ({len(rows)} images) | | | exact {e_hit}/{len(rows)}, mean error {e_err:.2f} "
        f"| exact {r_hit}/{len(rows)}, mean error {r_err:.2f} | {np.mean(e_iou):.2f} | {np.mean(r_iou):.2f} "
        f"| | {np.mean([r.expert_ms for r in rows]):.0f} | {np.mean([r.raw_ms for r in rows]):.1f} |"
    )
    return lines


# --- touching objects ------------------------------------------------------------------------------
TOUCHING = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "touching"
# Coins of skimage.data.coins() to cut out for the touching layouts: indexes into the coin boxes of
# tests/data/real/detect/truth.json (the larger coins, 47-65 px across).
LAYOUT_COINS = (5, 17, 18, 20, 2, 10, 22)


def build_touching() -> list[RealImage]:
    """The touching set of tests/data/real/touching/truth.json (``kind`` is its split: tune or held-out)."""
    from skimage import data as sk

    truth = json.loads((TOUCHING / "truth.json").read_text(encoding="utf-8"))
    out = []
    for p in truth["images"]:
        if "skimage" in p:
            rgb = getattr(sk, p["skimage"])()
            data = _png(np.stack([rgb] * 3, axis=-1) if rgb.ndim == 2 else rgb)
        elif "coins_on" in p:
            data = _png(_touching_coins(sk, p["layout"]))
        else:
            data = (TOUCHING / p["file"]).read_bytes()
        out.append(RealImage(p["name"], p["split"], data, p["count"], [], None, p["source"]))
    return out


def _touching_coins(sk: Any, layout: str) -> np.ndarray:
    """Real coins cut out of skimage's coins photo, scaled 2x and laid touching (3 px overlap) in a row or a
    hexagonal cluster on white, with the short soft shadow of a flat coin for the cluster."""
    grey = sk.coins()
    boxes = json.loads(TRUTH.read_text(encoding="utf-8"))["photos"][0]["boxes"]
    coins = []
    for i in LAYOUT_COINS:
        x1, y1, x2, y2 = boxes[i]
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, min(x2 - x1, y2 - y1) / 2 - 1
        patch = cv2.resize(grey[int(cy - r) : int(cy + r), int(cx - r) : int(cx + r)], None, fx=2, fy=2)
        mask = np.zeros(patch.shape, np.uint8)
        cv2.circle(mask, (patch.shape[1] // 2, patch.shape[0] // 2), int(r * 2) - 1, 255, -1)
        coins.append((patch, mask, r * 2 - 1))
    if layout == "row":
        w, h, coins = 1000, 400, coins[:6]
        centres, x = [], 60.0
        for k, (_p, _m, r) in enumerate(coins):
            x += r if k == 0 else r + coins[k - 1][2] - 3
            centres.append((x, h / 2))
    else:
        w = h = 800
        r0 = coins[0][2]
        centres = [(w / 2, h / 2)] + [
            (w / 2 + (r0 + r - 3) * np.cos(a), h / 2 + (r0 + r - 3) * np.sin(a))
            for (_p, _m, r), a in zip(coins[1:], np.arange(6) * np.pi / 3, strict=True)
        ]
    canvas = np.full((h, w), 255.0, np.float32)
    if layout != "row":
        shade = np.zeros((h, w), np.float32)
        for (cx, cy), (_p, _m, r) in zip(centres, coins, strict=True):
            cv2.circle(shade, (int(cx + 3), int(cy + 3)), int(r), 1.0, -1)
        canvas *= 1.0 - 0.25 * cv2.GaussianBlur(shade, (9, 9), 0)
    for (cx, cy), (patch, mask, _r) in zip(centres, coins, strict=True):
        ph, pw = patch.shape
        x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
        region = canvas[y0 : y0 + ph, x0 : x0 + pw]
        region[mask > 0] = patch[mask > 0]
    return np.stack([np.clip(canvas, 0, 255).astype(np.uint8)] * 3, axis=-1)


def raw_watershed(bgr: np.ndarray) -> int:
    """OpenCV's own recipe for touching objects (its watershed tutorial, at the tutorial's numbers): Otsu
    (objects darker than the border inverted), opening 3x3 twice, sure foreground where the distance to the
    edge is above 0.7 of its maximum, markers from its parts, ``cv2.watershed``. Returns the count, less
    parts smaller than the expert's minimum area so both count the same things."""
    h, w = bgr.shape[:2]
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    _, mask = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).mean() > 127:
        mask = 255 - mask
    kernel = np.ones((3, 3), np.uint8)
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel, iterations=2)
    sure_bg = cv2.dilate(opened, kernel, iterations=3)
    dist = cv2.distanceTransform(opened, cv2.DIST_L2, 5)
    _, sure_fg = cv2.threshold(dist, 0.7 * dist.max(), 255, 0)
    sure_fg = sure_fg.astype(np.uint8)
    n, markers = cv2.connectedComponents(sure_fg)
    markers = markers + 1
    markers[cv2.subtract(sure_bg, sure_fg) == 255] = 0
    markers = cv2.watershed(bgr, markers)
    areas = np.bincount(markers[markers > 1].ravel(), minlength=n + 1)[2:]
    return int((areas >= MIN_AREA_SHARE * h * w).sum())


@dataclass
class CountRow:
    """One image of the touching set: truth, the expert's count, OpenCV's watershed recipe's, ms each."""

    name: str
    split: str
    truth: int
    expert_n: int
    raw_n: int
    expert_ms: float
    raw_ms: float


def measure_touching(images: list[RealImage] | None = None, repeats: int = 3) -> list[CountRow]:
    """Count every image of the touching set with the expert (contours) and the raw recipe, interleaved."""
    images = build_touching() if images is None else images
    expert = DetectExpert()
    rows = []
    for im in images:
        decoded = decode_image(im.data)
        bgr = decoded.bgr()
        e_ms, r_ms = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            n_e = int(expert.analyze(decoded, {}).measurements["count"])
            t1 = time.perf_counter()
            n_r = raw_watershed(bgr)
            t2 = time.perf_counter()
            e_ms.append((t1 - t0) * 1000)
            r_ms.append((t2 - t1) * 1000)
        rows.append(CountRow(im.name, im.kind, im.count, n_e, n_r, min(e_ms), min(r_ms)))
    return rows


def touching_table(rows: list[CountRow]) -> list[str]:
    """The markdown table of the touching set, with totals per split."""
    lines = [
        "",
        "Touching objects (contours count): expert / OpenCV's watershed recipe at the tutorial's numbers.",
        "",
        "| image | split | truth | expert n | raw n | expert ms | raw ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.split} | {r.truth} | {r.expert_n} | {r.raw_n} | {r.expert_ms:.0f} | {r.raw_ms:.1f} |"
        )
    for split in ("tune", "held-out"):
        sel = [r for r in rows if r.split == split]
        if not sel:
            continue

        def within(n: int, t: int) -> bool:
            return abs(n - t) <= 0.1 * t

        lines.append(
            f"| **{split}** ({len(sel)} images) | | | within 10%: {sum(within(r.expert_n, r.truth) for r in sel)}"
            f"/{len(sel)}, mean error {np.mean([abs(r.expert_n - r.truth) for r in sel]):.2f} "
            f"| within 10%: {sum(within(r.raw_n, r.truth) for r in sel)}/{len(sel)}, mean error "
            f"{np.mean([abs(r.raw_n - r.truth) for r in sel]):.2f} | | |"
        )
    return lines


# --- cats --------------------------------------------------------------------------------------------
ANIMALS = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "animals"


@dataclass
class AnimalPhoto:
    """A real photo with its cats (whole-cat boxes and face boxes); ``split``: tune or held-out."""

    name: str
    split: str
    data: bytes
    cats: list[list[float]]
    faces: list[list[float]]
    ignore_others: bool = False


def build_animals() -> list[AnimalPhoto]:
    """The cat set of tests/data/real/animals/truth.json (skimage entries need scikit-image)."""
    truth = json.loads((ANIMALS / "truth.json").read_text(encoding="utf-8"))
    out = []
    for p in truth["images"]:
        if "skimage" in p:
            from skimage import data as sk

            rgb = getattr(sk, p["skimage"])()
            data = _png(np.stack([rgb] * 3, axis=-1) if rgb.ndim == 2 else rgb)
        else:
            data = (ANIMALS / p["file"]).read_bytes()
        out.append(AnimalPhoto(p["name"], p["split"], data, p["cats"], p["faces"], p.get("ignore_others", False)))
    return out


def raw_cat_faces(bgr: np.ndarray) -> list[list[float]]:
    """OpenCV at its defaults: the extended frontal cat-face Haar cascade's ``detectMultiScale`` on grey."""
    cc = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalcatface_extended.xml"))
    rects = cc.detectMultiScale(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    return [[float(x), float(y), float(x + w), float(y + h)] for x, y, w, h in np.asarray(rects).reshape(-1, 4)]


def cats_found(photo: AnimalPhoto, found: list[list[float]]) -> tuple[int, int]:
    """(cats found, false boxes): a cat counts as found when a box matches its whole-cat box or its face box
    at IoU >= MATCH_IOU (a cascade answers faces, a detector whole animals); each box is used once."""
    used: set[int] = set()
    hits = 0
    for k, cat in enumerate(photo.cats):
        targets = [cat] + ([photo.faces[k]] if k < len(photo.faces) else [])
        best = max(((iou(t, f), j) for j, f in enumerate(found) if j not in used for t in targets), default=(0.0, -1))
        if best[0] >= MATCH_IOU:
            used.add(best[1])
            hits += 1
    false = 0 if photo.ignore_others else len(found) - len(used)
    return hits, false


def measure_animals(photos: list[AnimalPhoto] | None = None, repeats: int = 3) -> list[dict[str, Any]]:
    """``detect cat`` on every photo: the expert (learned where installed) / its OpenCV fallback (the Haar
    cat-face cascade, the previous detector) / the raw cascade at defaults; best of ``repeats`` ms."""
    photos = build_animals() if photos is None else photos
    learned, opencv = DetectExpert(), DetectExpert(learned=False)
    rows = []
    for ph in photos:
        image = decode_image(ph.data)
        bgr = image.bgr()
        row: dict[str, Any] = {"name": ph.name, "split": ph.split, "cats": len(ph.cats)}
        for side in SIDES:
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                if side == "raw":
                    found = raw_cat_faces(bgr)
                else:
                    r = (learned if side == "learned" else opencv).analyze(image, {"query": "cat"})
                    found = [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]
                best = min(best, (time.perf_counter() - t0) * 1000)
            row[side] = (*cats_found(ph, found), best)
        rows.append(row)
    return rows


def animals_table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of the cat set, with totals per split."""
    lines = [
        "",
        "detect cat: learned (SSD MobileNet v2 COCO) / OpenCV fallback = previous detector (Haar cat-face cascade) "
        f"/ raw cascade at defaults. Found = cats matched at IoU >= {MATCH_IOU} (whole cat or its face).",
        "",
        "| photo | split | cats | found | false boxes | ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        trio = [" / ".join(f"{r[s][i]:.0f}" for s in SIDES) for i in range(3)]
        lines.append(f"| {r['name']} | {r['split']} | {r['cats']} | {trio[0]} | {trio[1]} | {trio[2]} |")
    for split in ("tune", "held-out"):
        sel = [r for r in rows if r["split"] == split]
        cats = sum(r["cats"] for r in sel)
        found = " / ".join(f"{sum(r[s][0] for r in sel)}" for s in SIDES)
        false = " / ".join(f"{sum(r[s][1] for r in sel)}" for s in SIDES)
        lines.append(f"| **{split}** | {len(sel)} photos | {cats} | {found} | {false} | |")
    return lines


# --- people and faces -------------------------------------------------------------------------------
PEOPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "people"
SIDES = ("learned", "opencv", "raw")  # the expert now, its OpenCV fallback (= the previous detector), raw OpenCV
MATCH_IOU = 0.5  # a true box counts as found when a detection overlaps it by this much (PASCAL VOC)
SPEED_SIDE = 640  # the speed line: every photo scaled to this longer side


@dataclass
class PeoplePhoto:
    """A real photo of people with hand-made truth: person boxes and face boxes."""

    name: str
    kind: str
    data: bytes
    persons: list[list[float]]
    faces: list[list[float]]
    source: str = ""


def build_people() -> list[PeoplePhoto]:
    """The people set of tests/data/real/people/truth.json (skimage entries need scikit-image)."""
    truth = json.loads((PEOPLE / "truth.json").read_text(encoding="utf-8"))
    out = []
    for p in truth["images"]:
        if "skimage" in p:
            from skimage import data as sk

            rgb = getattr(sk, p["skimage"])()
            rgb = np.stack([rgb] * 3, axis=-1) if rgb.ndim == 2 else rgb
            data = _png(rgb)
        else:
            data = (PEOPLE / p["file"]).read_bytes()
        out.append(PeoplePhoto(p["name"], p["kind"], data, p["persons"], p["faces"], p["source"]))
    return out


def raw_people(bgr: np.ndarray, label: str) -> list[list[float]]:
    """OpenCV at its defaults: ``HOGDescriptor.detectMultiScale`` with the default people SVM for people,
    the frontal-face Haar cascade's ``detectMultiScale`` on the grey image for faces."""
    if label == "person":
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        rects, _ = hog.detectMultiScale(bgr)
    else:
        cc = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        rects = cc.detectMultiScale(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    return [[float(x), float(y), float(x + w), float(y + h)] for x, y, w, h in np.asarray(rects).reshape(-1, 4)]


def recall(truth: list[list[float]], found: list[list[float]]) -> int:
    """True boxes matched one-to-one (greedy, best IoU first) by a detection at IoU >= MATCH_IOU."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t, used_f = set(), set()
    for v, i, j in pairs:
        if v >= MATCH_IOU and i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t)


@dataclass
class PeopleRow:
    """One photo, one label: per side the boxes found, true boxes matched, mean best IoU and ms."""

    name: str
    kind: str
    label: str
    truth: int
    found: dict[str, int]
    matched: dict[str, int]
    iou: dict[str, float | None]
    ms: dict[str, float]


def measure_people(photos: list[PeoplePhoto] | None = None, repeats: int = 3) -> list[PeopleRow]:
    """Person and face detection on every photo, each side on the same decoded image, best of ``repeats``."""
    photos = build_people() if photos is None else photos
    learned, opencv = DetectExpert(), DetectExpert(learned=False)
    rows = []
    for ph in photos:
        image = decode_image(ph.data)
        bgr = image.bgr()
        for label, truth in (("person", ph.persons), ("face", ph.faces)):
            boxes: dict[str, list[list[float]]] = {}
            ms: dict[str, float] = {}
            for side in SIDES:
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    if side == "raw":
                        found = raw_people(bgr, label)
                    else:
                        r = (learned if side == "learned" else opencv).analyze(image, {"query": label})
                        found = [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]
                    best = min(best, (time.perf_counter() - t0) * 1000)
                boxes[side], ms[side] = found, best
            rows.append(
                PeopleRow(
                    name=ph.name,
                    kind=ph.kind,
                    label=label,
                    truth=len(truth),
                    found={s: len(b) for s, b in boxes.items()},
                    matched={s: recall(truth, b) for s, b in boxes.items()},
                    iou={s: mean_best_iou(truth, b) for s, b in boxes.items()},
                    ms=ms,
                )
            )
    return rows


def person_ms_at(photos: list[PeoplePhoto], side: int = SPEED_SIDE, repeats: int = 3) -> dict[str, float]:
    """Median ms of ``detect person`` per photo scaled to ``side`` px on its longer side, per side; and the
    same in CPU ms of this process (``cpu:`` keys): on a shared machine wall time counts the neighbours too."""
    learned, opencv = DetectExpert(), DetectExpert(learned=False)
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    cpu: dict[str, list[float]] = {s: [] for s in SIDES}
    for ph in photos:
        bgr = decode_image(ph.data).bgr()
        scale = side / max(bgr.shape[:2])
        small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        image = decode_image(_png(small[..., ::-1]))
        for s in SIDES:
            best, best_cpu = float("inf"), float("inf")
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                if s == "raw":
                    raw_people(image.bgr(), "person")
                else:
                    (learned if s == "learned" else opencv).analyze(image, {"query": "person"})
                best = min(best, (time.perf_counter() - t0) * 1000)
                best_cpu = min(best_cpu, (time.process_time() - c0) * 1000)
            times[s].append(best)
            cpu[s].append(best_cpu)
    return {
        **{s: float(np.median(v)) for s, v in times.items()},
        **{f"cpu:{s}": float(np.median(v)) for s, v in cpu.items()},
    }


def people_totals(rows: list[PeopleRow], label: str) -> dict[str, dict[str, float]]:
    """Per side: recall (matched / true boxes), mean best IoU over photos with truth, boxes found, mean ms."""
    sel = [r for r in rows if r.label == label]
    truth = sum(r.truth for r in sel)
    out = {}
    for s in SIDES:
        ious = [r.iou[s] for r in sel if r.iou[s] is not None]
        out[s] = {
            "recall": sum(r.matched[s] for r in sel) / truth if truth else 0.0,
            "iou": float(np.mean(ious)) if ious else 0.0,
            "found": sum(r.found[s] for r in sel),
            "truth": truth,
            "ms": float(np.mean([r.ms[s] for r in sel])),
        }
    return out


def people_table(rows: list[PeopleRow], speed: dict[str, float] | None = None) -> list[str]:
    """The markdown table: per photo and label, learned / OpenCV fallback / raw OpenCV side by side."""

    def trio(vals: dict[str, Any], fmt: str = "{}") -> str:
        return " / ".join("-" if vals[s] is None else fmt.format(vals[s]) for s in SIDES)

    lines = [
        "",
        "People and faces: learned (people: SSD MobileNet v2 COCO where the [objects] extra is installed, else "
        "BlazePose; faces: BlazeFace) / OpenCV fallback (Haar, HOG) / raw OpenCV "
        f"defaults. Found = true boxes matched at IoU >= {MATCH_IOU} of the truth; IoU = mean best IoU per true box.",
        "",
        "| photo | kind | label | truth | found | matched | IoU | ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.truth and not any(r.found.values()):
            continue
        lines.append(
            f"| {r.name} | {r.kind} | {r.label} | {r.truth} | {trio(r.found)} | {trio(r.matched)} "
            f"| {trio(r.iou, '{:.2f}')} | {trio(r.ms, '{:.0f}')} |"
        )
    for label in ("person", "face"):
        t = people_totals(rows, label)

        def col(key: str, fmt: str, t: dict[str, dict[str, float]] = t) -> str:
            return " / ".join(fmt.format(t[s][key]) for s in SIDES)

        lines.append(
            f"| **overall {label}** | {len({r.name for r in rows})} photos | | {t['learned']['truth']} "
            f"| {col('found', '{:.0f}')} | recall {col('recall', '{:.2f}')} | {col('iou', '{:.2f}')} "
            f"| {col('ms', '{:.0f}')} |"
        )
    if speed:
        lines.append(
            f"\ndetect person, photos scaled to {SPEED_SIDE} px (median ms): "
            + ", ".join(f"{s} {speed[s]:.0f}" for s in SIDES)
            + "; CPU ms of this process: "
            + ", ".join(f"{s} {speed['cpu:' + s]:.0f}" for s in SIDES)
        )
    return lines


def run(argv: list[str] | argparse.Namespace | None = None) -> list[str]:
    """Build the sets, measure every side and return the table lines. ``argv``: command-line words, or a
    caller's parsed arguments (its ``repeats`` and ``part``, if it has them, are used)."""
    if isinstance(argv, argparse.Namespace):
        repeats, part = int(getattr(argv, "repeats", None) or 3), getattr(argv, "part", None)
    else:
        ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        ap.add_argument("--repeats", type=int, default=3, help="timing repeats per image (best is kept)")
        ap.add_argument("--part", choices=["objects", "touching", "animals", "people"], help="one part only")
        args = ap.parse_args(argv)
        repeats, part = args.repeats, args.part
    repeats = max(1, repeats)
    lines: list[str] = []
    if part in (None, "objects"):
        lines += table(measure(repeats=repeats))
    if part in (None, "touching"):
        lines += touching_table(measure_touching(repeats=repeats))
    if part in (None, "animals"):
        lines += animals_table(measure_animals(repeats=repeats))
    if part in (None, "people"):
        photos = build_people()
        lines += people_table(measure_people(photos, repeats), person_ms_at(photos, repeats=repeats))
    return lines


if __name__ == "__main__":
    print("\n".join(run()))

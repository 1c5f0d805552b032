"""The ``detect`` expert: objects, counts, sizes and ratios from OpenCV alone (no model download).

Three modes:

- contours (no query): every significant object with its box, area, share of the image, aspect
  ratio, shape class and colour, and the count. The background is modelled from the picture's border
  inwards with a local correction (uneven light, dark tables, a large product on white), touching round
  objects are split by a watershed, pieces of one object cut apart by a background-coloured band are
  joined, and objects smaller than a fraction of the image do not count, so noise is not an object.
  Letters and pen strokes are reported as "text-like marks", never as shapes.
- measure (query ``measure`` / ``尺寸`` / ``比例`` / ``像素``, or ``mode="measure"``): the same, said as
  sizes: pixels and share of the image, ratios between the largest objects, where the subject sits
  (centre, rule-of-thirds cell), resolution and DPI.
- labelled detection (query ``face``, ``person``, ``cat``, ``eye``, ``smile``, ``plate``, ``qr``,
  ``barcode`` and their plurals and synonyms): the Haar cascades in ``cv2.data.haarcascades``, the
  HOG people detector, and the QR and barcode detectors, whose decoded payloads become text lines.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.cancel import check_cancelled
from experts.errors import EngineMissing, ExpertError
from experts.images import DecodedImage
from experts.schema import BBox, ExpertResult, TextLine, placement, ratios_between

# --- labels --------------------------------------------------------------------------------------
# Canonical label -> the detectors that find it.
LABELS: dict[str, tuple[str, ...]] = {
    "face": ("frontalface", "profileface"),
    "eye": ("eye",),
    "smile": ("smile",),
    "cat": ("catface",),
    "person": ("hog_people",),
    "full body": ("fullbody",),
    "upper body": ("upperbody",),
    "lower body": ("lowerbody",),
    "plate": ("plate",),
    "qr": ("qr",),
    "barcode": ("barcode",),
}
SYNONYMS: dict[str, str] = {
    "faces": "face",
    "head": "face",
    "heads": "face",
    "人脸": "face",
    "脸": "face",
    "面孔": "face",
    "eyes": "eye",
    "眼睛": "eye",
    "smiles": "smile",
    "smiling": "smile",
    "微笑": "smile",
    "cats": "cat",
    "cat face": "cat",
    "cat faces": "cat",
    "猫": "cat",
    "people": "person",
    "persons": "person",
    "pedestrian": "person",
    "pedestrians": "person",
    "human": "person",
    "humans": "person",
    "man": "person",
    "men": "person",
    "woman": "person",
    "women": "person",
    "body": "person",
    "bodies": "person",
    "人": "person",
    "行人": "person",
    "fullbody": "full body",
    "full bodies": "full body",
    "upperbody": "upper body",
    "upper bodies": "upper body",
    "lowerbody": "lower body",
    "lower bodies": "lower body",
    "plates": "plate",
    "license plate": "plate",
    "licence plate": "plate",
    "license plates": "plate",
    "number plate": "plate",
    "车牌": "plate",
    "qr code": "qr",
    "qrcode": "qr",
    "qr codes": "qr",
    "qrcodes": "qr",
    "二维码": "qr",
    "barcodes": "barcode",
    "bar code": "barcode",
    "ean": "barcode",
    "upc": "barcode",
    "条形码": "barcode",
    "条码": "barcode",
}
MEASURE_WORDS = {
    "measure",
    "measurement",
    "measurements",
    "size",
    "sizes",
    "ratio",
    "ratios",
    "pixels",
    "dimensions",
    "resolution",
    "dpi",
    "尺寸",
    "比例",
    "像素",
    "大小",
    "分辨率",
}
CONTOUR_WORDS = {"contours", "contour", "shapes", "shape", "objects", "count", "轮廓", "形状", "数量"}

_CASCADE_FILES = {
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
# detectMultiScale minNeighbors per cascade: smile and eye cascades fire on any texture otherwise.
_NEIGHBOURS = {"smile": 20, "eye": 8, "fullbody": 4, "upperbody": 5, "lowerbody": 5}


def canonical_label(query: str) -> str | None:
    """The detector label for a query word (plural, synonym and Chinese forms accepted), or None."""
    q = " ".join(query.strip().lower().replace("_", " ").replace("-", " ").split())
    if q in LABELS:
        return q
    if q in SYNONYMS:
        return SYNONYMS[q]
    if q.endswith("s") and q[:-1] in LABELS:
        return q[:-1]
    return None


class DetectArgs(ExpertArgs):
    query: str | None = Field(
        default=None,
        description=(
            "What to find: face, person, cat, eye, smile, plate, qr, barcode (plurals fine); 'measure' for "
            "sizes and ratios; empty for every object's shape, size and colour."
        ),
    )
    mode: Literal["contours", "measure"] = Field(
        default="contours",
        description="contours: objects and counts; measure: sizes, ratios, placement, DPI.",
    )
    max_objects: int = Field(default=50, ge=1, le=500, description="Most objects to report, largest first.")


class DetectExpert(Expert):
    """Count and measure objects, or find faces, people, cats, plates, QR codes and barcodes, with OpenCV."""

    name = "detect"
    aliases = ("measure", "count", "contours", "opencv", "objects", "尺寸", "比例", "像素")
    description = (
        "Find and measure things with OpenCV: with no query, every object's box, size (pixels and share of "
        "the image), aspect ratio, shape and colour, and the count; 'measure' for sizes, ratios, placement "
        "and DPI; or a label (face, person, cat, eye, smile, plate, qr, barcode) for labelled boxes, with "
        "QR/barcode contents decoded."
    )
    Args = DetectArgs
    positional = "query"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._detectors: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._build_lock = threading.Lock()
        # Minimum object area as a share of the image (config: min_area_share).
        self.min_area_share = float(config.get("min_area_share", 0.0005))

    def status(self) -> dict[str, Any]:
        cascades = getattr(getattr(cv2, "data", None), "haarcascades", "")
        present = [k for k, f in _CASCADE_FILES.items() if cascades and os.path.isfile(os.path.join(cascades, f))]
        ok = len(present) == len(_CASCADE_FILES) and hasattr(cv2, "HOGDescriptor")
        out: dict[str, Any] = {
            "ok": ok,
            "engine": f"opencv {cv2.__version__}",
            "cascades": f"{len(present)}/{len(_CASCADE_FILES)} in {cascades or '(none)'}",
            "labels": sorted(LABELS),
        }
        if not ok:
            out["hint"] = "pip install 'opencv-python-headless>=4.9,<5' (OpenCV 5 has no cascades or HOG)"
        return out

    # --- detectors, built once per process ------------------------------------------------------
    def _detector(self, key: str) -> tuple[Any, threading.Lock]:
        det = self._detectors.get(key)
        if det is None:
            with self._build_lock:
                det = self._detectors.get(key)
                if det is None:
                    det = self._build(key)
                    self._locks[key] = threading.Lock()
                    self._detectors[key] = det
        # OpenCV detector objects keep scratch state: one call at a time per object.
        return det, self._locks[key]

    def _build(self, key: str) -> Any:
        if key in _CASCADE_FILES:
            base = getattr(getattr(cv2, "data", None), "haarcascades", None)
            path = os.path.join(base or "", _CASCADE_FILES[key])
            if not base or not os.path.isfile(path) or not hasattr(cv2, "CascadeClassifier"):
                raise EngineMissing(
                    f"detect: OpenCV cascade {_CASCADE_FILES[key]} not found; "
                    "pip install 'opencv-python-headless>=4.9,<5'"
                )
            cc = cv2.CascadeClassifier(path)
            if cc.empty():
                raise EngineMissing(f"detect: could not load OpenCV cascade {path}")
            return cc
        if key == "hog_people":
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
            return hog
        if key == "qr":
            return cv2.QRCodeDetector()
        if key == "barcode":
            if hasattr(cv2, "barcode") and hasattr(cv2.barcode, "BarcodeDetector"):
                return cv2.barcode.BarcodeDetector()
            if hasattr(cv2, "barcode_BarcodeDetector"):
                return cv2.barcode_BarcodeDetector()
            raise EngineMissing("detect: this OpenCV build has no BarcodeDetector (OpenCV >= 4.8 has)")
        raise ExpertError(f"detect: no detector {key!r}")

    # --- work -----------------------------------------------------------------------------------
    def _analyze(self, image: DecodedImage, args: DetectArgs) -> ExpertResult:
        mode = args.mode
        label = None
        if args.query and args.query.strip():
            q = args.query.strip().lower()
            if q in MEASURE_WORDS:
                mode = "measure"
            elif q in CONTOUR_WORDS:
                mode = "contours"
            else:
                label = canonical_label(q)
                if label is None:
                    raise ExpertError(
                        f"detect: unknown label {args.query!r} (labels: {', '.join(sorted(LABELS))}; "
                        "or 'measure', or no query for contours)"
                    )
        if label is not None:
            return self._labelled(image, label)
        return self._contours(image, mode, args.max_objects)

    # --- contours and measurements --------------------------------------------------------------
    def _contours(self, image: DecodedImage, mode: str, max_objects: int) -> ExpertResult:
        # A bounded working resolution: the analysis holds several float copies of the picture, which for
        # a 49 MP photo peaked at 2.2 GB; objects are at least 0.05% of the image, so 2048 px loses none.
        work = image.view(CONTOUR_MAX_SIDE)
        found = analyse(work.bgr(), self.min_area_share)
        if work is not image:
            to_original(found, image.width / work.width, image.height / work.height)
        w, h = image.width, image.height
        objects = found.objects
        total = len(objects)
        objects = objects[:max_objects]
        counts = Counter(o["shape"] for o in objects)
        bboxes = [
            BBox(label=o["shape"], x1=o["bbox"][0], y1=o["bbox"][1], x2=o["bbox"][2], y2=o["bbox"][3]) for o in objects
        ]
        measurements: dict[str, Any] = {
            "count": total,
            "counts": dict(counts),
            "image": image_facts(image),
            "objects": objects,
            "ratios": ratios_between(objects),
        }
        if objects:
            measurements["subject"] = placement(objects[0], w, h)
        if mode == "measure":
            labels = [
                f"{o['colour']} {o['shape']} {o['width']}x{o['height']} px ({o['share'] * 100:.1f}% of image)"
                for o in objects[:10]
            ]
        else:
            labels = [f"{n} {_plural(shape, n)}" for shape, n in counts.most_common()]
        attributes: dict[str, Any] = {
            "object_count": total,
            "image_size": f"{w}x{h}",
            "mode": mode,
        }
        if found.cluttered:
            # No plain backdrop: the objects are the picture's main light/dark regions, said so.
            attributes["background"] = "cluttered"
        if found.marks:
            # Letters and pen strokes are not shapes: said once, as what they look like.
            labels.insert(0, f"{len(found.marks)} text-like marks")
            attributes["content"] = "text-like marks"
            measurements["text_like_marks"] = {"count": len(found.marks), "region": found.marks_box}
        if image.dpi:
            attributes["dpi"] = "x".join(f"{round(d, 1):g}" for d in image.dpi)
        if objects:
            attributes["subject_placement"] = measurements["subject"]["placement"]
        return self.new_result(image, objects=labels, bbox=bboxes, measurements=measurements, attributes=attributes)

    # --- labelled detection ---------------------------------------------------------------------
    def _labelled(self, image: DecodedImage, label: str) -> ExpertResult:
        bgr = image.bgr()
        h, w = bgr.shape[:2]
        texts: list[TextLine] = []
        if label == "qr":
            boxes = self._qr(bgr, texts)
        elif label == "barcode":
            boxes = self._barcode(bgr, texts)
        elif label == "person":
            boxes = self._people(bgr)
        elif label in ("eye", "smile"):
            boxes = self._in_faces(bgr, label)
        else:
            boxes = []
            for key in LABELS[label]:
                check_cancelled()
                boxes += self._cascade(bgr, key, label)
            if label == "face":
                check_cancelled()  # the profile cascade looks one way: run it mirrored too
                flipped = self._cascade(np.ascontiguousarray(bgr[:, ::-1]), "profileface", label)
                boxes += [
                    BBox(label=b.label, x1=w - b.x2, y1=b.y1, x2=w - b.x1, y2=b.y2, score=b.score) for b in flipped
                ]
        boxes = nms(boxes, 0.3)
        n = len(boxes)
        objects = [f"{n} {_plural(label, n)}"] if n else []
        result = self.new_result(
            image,
            objects=objects,
            bbox=boxes,
            text=texts,
            full_text="\n".join(t.text for t in texts) or None,
            attributes={"query": label, f"{label.replace(' ', '_')}_count": n, "image_size": f"{w}x{h}"},
            measurements={
                "count": n,
                "detections": [
                    {
                        "label": b.label,
                        "bbox": [b.x1, b.y1, b.x2, b.y2],
                        "width": round(b.x2 - b.x1, 1),
                        "height": round(b.y2 - b.y1, 1),
                        "share": round((b.x2 - b.x1) * (b.y2 - b.y1) / float(w * h), 5),
                    }
                    for b in boxes
                ],
            },
        )
        return result

    def _cascade(
        self,
        bgr: np.ndarray,
        key: str,
        label: str,
        gray: np.ndarray | None = None,
        offset: tuple[float, float] = (0.0, 0.0),
    ) -> list[BBox]:
        cc, lock = self._detector(key)
        if gray is None:
            gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        small, scale = _downscale(gray, 1280)
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
        for (x, y, rw, rh), wt in _with_weights(rects, weights):
            out.append(
                BBox(
                    label=label,
                    x1=round(x / scale + offset[0], 1),
                    y1=round(y / scale + offset[1], 1),
                    x2=round((x + rw) / scale + offset[0], 1),
                    y2=round((y + rh) / scale + offset[1], 1),
                    score=_squash(float(wt)),
                )
            )
        return out

    def _in_faces(self, bgr: np.ndarray, label: str) -> list[BBox]:
        """Eyes and smiles are searched inside faces (upper half for eyes, lower half for smiles):
        on their own these cascades fire on any texture. Without a face, the whole image is searched
        with the cascade's strict setting."""
        gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        faces = nms(self._cascade(bgr, "frontalface", "face", gray=gray), 0.3)
        if not faces:
            return self._cascade(bgr, label, label, gray=gray)
        out: list[BBox] = []
        for f in faces:
            x1, y1, x2, y2 = int(f.x1), int(f.y1), int(f.x2), int(f.y2)
            mid = (y1 + y2) // 2
            ry1, ry2 = (y1, mid + (y2 - y1) // 10) if label == "eye" else (mid, y2)
            roi = np.ascontiguousarray(gray[ry1:ry2, x1:x2])
            if roi.size == 0:
                continue
            cc, lock = self._detector(label)
            side = max(8, (x2 - x1) // (8 if label == "eye" else 5))
            with lock:
                rects, _l, weights = cc.detectMultiScale3(
                    roi,
                    scaleFactor=1.1,
                    minNeighbors=_NEIGHBOURS.get(label, 5),
                    minSize=(side, side),
                    outputRejectLevels=True,
                )
            for (x, y, rw, rh), wt in _with_weights(rects, weights):
                out.append(
                    BBox(
                        label=label,
                        x1=float(x + x1),
                        y1=float(y + ry1),
                        x2=float(x + rw + x1),
                        y2=float(y + rh + ry1),
                        score=_squash(float(wt)),
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

    def _people(self, bgr: np.ndarray) -> list[BBox]:
        hog, lock = self._detector("hog_people")
        small, scale = _downscale(bgr, 1024)
        with lock:
            rects, weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
        out = []
        for (x, y, rw, rh), wt in _with_weights(rects, weights):
            if float(wt) < 0.3:  # below this the SVM margin is mostly background
                continue
            out.append(
                BBox(
                    label="person",
                    x1=round(x / scale, 1),
                    y1=round(y / scale, 1),
                    x2=round((x + rw) / scale, 1),
                    y2=round((y + rh) / scale, 1),
                    score=_squash(float(wt) * 2.0),
                )
            )
        return out

    def _qr(self, bgr: np.ndarray, texts: list[TextLine]) -> list[BBox]:
        det, lock = self._detector("qr")
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
            boxes.append(_quad_box("qr", quad))
            if payload:
                texts.append(_text_line(payload, quad))
        return boxes

    def _barcode(self, bgr: np.ndarray, texts: list[TextLine]) -> list[BBox]:
        det, lock = self._detector("barcode")
        # OpenCV's barcode detector only locks on within a band of bar widths: try a few scales.
        ok, infos, points, scale = False, (), None, 1.0
        for scale in (1.0, 0.66, 0.5, 0.33, 1.5):
            check_cancelled()
            if scale > 1.0 and bgr.shape[0] * bgr.shape[1] > BARCODE_UPSCALE_MAX_PIXELS:
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
            boxes.append(_quad_box("barcode", quad))
            if payload:
                texts.append(_text_line(payload, quad))
        return boxes


# --- contour analysis ----------------------------------------------------------------------------
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
    small, _ = _downscale(lab, 200)
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
    mask, dist, _ink, _cluttered = _foreground(bgr)
    return mask, dist


# A border further than this (median, Lab units) from any smooth surface is a busy scene, not a backdrop:
# skimage's cameraman measures 26, its cat 24, coffee table 36, astronaut 50; coins 9.8, pages and walls < 6.
CLUTTERED_BORDER = 18.0


def _foreground(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
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


# Longest side the contour analysis works on; bigger images are analysed on a downscaled view and the
# findings mapped back (to_original). Labelled detection downscales per detector (_downscale).
CONTOUR_MAX_SIDE = 2048
# Above this many pixels the barcode search skips its 1.5x upscaled try.
BARCODE_UPSCALE_MAX_PIXELS = 12_000_000

# Text reads as marks, not shapes. Ink covers a small part of a word's or a pen stroke's convex hull (median
# 0.51 on skimage's page, 0.62 on its handwriting) but most of a coin's, a cup's or a drawn shape's (0.9-1.0).
# An image reads as text when it has at least 8 small parts and their median ink share is below 0.67; then
# every small part (< 5% of the image) and every sparse one is a mark.
TEXT_INK_SHARE = 0.67
MARK_INK_SHARE = 0.85
MIN_MARKS_FOR_TEXT = 8
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
    mask, dist, ink, cluttered = _foreground(bgr)
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
            pieces.extend(split_touching(c, min_area))
    outlines = []
    for c in pieces:
        check_cancelled()
        c = _refine(c, dist, h, w)
        if c is None or cv2.contourArea(c) < min_area:
            continue
        x, y, bw, bh = cv2.boundingRect(c)
        if bw * bh >= 0.98 * image_area:  # the frame of the picture itself
            continue
        outlines.append(c)
    rgb = bgr[:, :, ::-1]
    check_cancelled()
    found = [_measure(c, rgb, image_area) for c in merge_nested(outlines, h, w)]
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
    return set(small) | {i for i, s in share.items() if s < MARK_INK_SHARE}


def _measure(c: np.ndarray, rgb: np.ndarray, image_area: float) -> dict[str, Any]:
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


# Watershed splits a component only where it is two or more round-ish bodies joined by a neck: every part
# must be this convex (coins, cups, pebbles); a horse's legs or a hand's fingers stay one object.
SPLIT_MIN_SOLIDITY = 0.85
SPLIT_PEAK = 0.6  # markers: where the distance to the edge is above this share of the component's peak


def split_touching(contour: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Touching objects apart: watershed on the distance transform from one marker per thick core.

    A convex component is one object; a split stands only when every part is convex and large enough."""
    area = cv2.contourArea(contour)
    hull = cv2.contourArea(cv2.convexHull(contour))
    if not hull or area / hull > 0.92:
        return [contour]
    x, y, bw, bh = cv2.boundingRect(contour)
    comp = np.zeros((bh + 2, bw + 2), np.uint8)
    cv2.drawContours(comp, [contour - [x - 1, y - 1]], -1, 255, thickness=cv2.FILLED)
    dt = cv2.distanceTransform(comp, cv2.DIST_L2, 5)
    peaks = (dt >= SPLIT_PEAK * dt.max()).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks)
    if n <= 2:
        return [contour]
    markers = markers + 1  # 1 = outside, 2.. = cores, 0 = to be decided
    markers[(comp > 0) & (peaks == 0)] = 0
    relief = cv2.cvtColor(255 - cv2.normalize(dt, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    labels = cv2.watershed(relief, markers.astype(np.int32))
    parts = []
    for k in range(2, n + 1):
        part = ((labels == k) & (comp > 0)).astype(np.uint8) * 255
        cs, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not cs:
            return [contour]
        c = max(cs, key=cv2.contourArea)
        a = cv2.contourArea(c)
        h_area = cv2.contourArea(cv2.convexHull(c))
        if a < min_area or not h_area or a / h_area < SPLIT_MIN_SOLIDITY:
            return [contour]
        parts.append(c + [x - 1, y - 1])
    return parts


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


def _refine(contour: np.ndarray, dist: np.ndarray, h: int, w: int) -> np.ndarray | None:
    """Redraw one object's outline at half its own contrast.

    One global threshold shrinks low-contrast objects (a yellow square on white loses a pixel all round)
    and grows high-contrast ones; each object's edge is where the image is halfway between background
    and that object. Objects whose inside barely differs from the background (stains) are dropped."""
    x, y, bw, bh = cv2.boundingRect(contour)
    pad = 4
    x0, y0, x1, y1 = max(x - pad, 0), max(y - pad, 0), min(x + bw + pad, w), min(y + bh + pad, h)
    comp = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.drawContours(comp, [contour - [x0, y0]], -1, 255, thickness=cv2.FILLED)
    inner = cv2.erode(comp, np.ones((5, 5), np.uint8))
    region = dist[y0:y1, x0:x1]
    core = region[inner > 0] if inner.any() else region[comp > 0]
    if core.size == 0:
        return None
    level = float(np.median(core))
    if level < MIN_OBJECT_CONTRAST:
        return None
    near = cv2.dilate(comp, np.ones((3, 3), np.uint8))
    refined = ((region > 0.5 * level) & (near > 0)).astype(np.uint8) * 255
    refined = cv2.morphologyEx(refined, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # Every outline point (not just a rectangle's four corners) is needed for the edge test below.
    cs, _ = cv2.findContours(refined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not cs:
        return None
    best = max(cs, key=cv2.contourArea)
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
            return None
    return best + [x0, y0]


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


# --- helpers -------------------------------------------------------------------------------------
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


def _with_weights(rects: Any, weights: Any) -> list[tuple[np.ndarray, float]]:
    """Pair OpenCV's detection rectangles with their weights (both empty tuples when none)."""
    if not len(rects):
        return []
    return list(zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=False))


def _squash(weight: float) -> float:
    """Map a detector's raw margin to 0..1 (monotone, not a calibrated probability)."""
    return round(1.0 / (1.0 + math.exp(-weight)), 4)


def _downscale(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_side:
        return img, 1.0
    scale = max_side / s
    return cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA), scale


def _quad_box(label: str, quad: np.ndarray) -> BBox:
    return BBox(
        label=label,
        x1=round(float(quad[:, 0].min()), 1),
        y1=round(float(quad[:, 1].min()), 1),
        x2=round(float(quad[:, 0].max()), 1),
        y2=round(float(quad[:, 1].max()), 1),
    )


def _text_line(payload: str, quad: np.ndarray) -> TextLine:
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


_IRREGULAR = {
    "person": "people",
    "full body": "full bodies",
    "upper body": "upper bodies",
    "lower body": "lower bodies",
    "qr": "QR codes",
    "barcode": "barcodes",
    "polygon": "polygons",
    "ellipse": "ellipses",
}


def _plural(word: str, n: int) -> str:
    if n == 1:
        return "QR code" if word == "qr" else word
    return _IRREGULAR.get(word, word + "s")

"""MediaPipe's learned detectors for faces and people, run with LiteRT (the ``[people]`` extra).

The models (Apache-2.0) ship inside this package, in ``experts/data/mediapipe/`` with their licence and
SHA-256 checksums, checked before a model is loaded:

- BlazeFace short range (128 px input, faces within about 2 m) and full range (192 px, faces up to about
  5 m), decoded as MediaPipe's graphs do: SSD anchors, box and keypoint regression, sigmoid scores, and
  weighted non-maximum suppression. Anchor and decoder options are those of MediaPipe's own graph configs
  (read from the 0.10.21 wheel's ``_framework_bindings`` library; see ``SsdOptions`` below).
- BlazePose's person detector (224 px): a person's face box and four body keypoints (mid-hip, a point on
  the full-body circle, mid-shoulder, a point on the upper-body circle), the same anchors and decoding.
- Selfie segmentation (256 px): a person mask, used to fit each person's box to the pixels of that person.

The image is letterboxed into each model's square input as MediaPipe does. Faces and people far smaller
than the picture are found by running the detectors on overlapping tiles as well as on the whole image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from experts.detect.backends.base import Backend
from experts.errors import EngineMissing
from experts.install import install_hint
from experts.schema import BBox, TextLine

MODEL_DIR = Path(__file__).resolve().parents[2] / "data" / "mediapipe"
EXTRA_HINT = f"{install_hint('people')} (LiteRT runs the MediaPipe models that ship with it)"


@dataclass(frozen=True)
class SsdOptions:
    """One detector's input size, anchors and decoding, as in MediaPipe's graph for it."""

    file: str
    size: int  # square input, pixels
    strides: tuple[int, ...]
    interpolated: bool  # a second anchor per layer (interpolated_scale_aspect_ratio > 0)
    keypoints: int
    min_score: float


# From MediaPipe 0.10.21: face_detection_short_range.pbtxt, face_detection_full_range.pbtxt and
# pose_detection_cpu.pbtxt (SsdAnchorsCalculator: min_scale 0.1484375, max_scale 0.75, anchor offsets 0.5,
# aspect ratio 1.0, fixed_anchor_size; TensorsToDetectionsCalculator: reverse_output_order, sigmoid scores
# clipped at 100, box and keypoint scales = the input size; NonMaxSuppression: 0.3 IoU, WEIGHTED).
FACE_SHORT = SsdOptions("face_detection_short_range.tflite", 128, (8, 16, 16, 16), True, 6, 0.5)
FACE_FULL = SsdOptions("face_detection_full_range_sparse.tflite", 192, (4,), False, 6, 0.6)
POSE = SsdOptions("pose_detection.tflite", 224, (8, 16, 32, 32, 32), True, 4, 0.5)
SELFIE = "selfie_segmentation.tflite"
NMS_IOU = 0.3
CONTAINED = 0.7  # a person box this much inside a larger one is part of that person


def ssd_anchors(opts: SsdOptions) -> np.ndarray:
    """Anchor centres (x, y), normalised, in the order the model emits its boxes (MediaPipe's
    SsdAnchorsCalculator with fixed anchor size: every anchor is 1 x 1, so only centres matter)."""
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(opts.strides):
        stride, per_cell = opts.strides[i], 0
        while i < len(opts.strides) and opts.strides[i] == stride:
            per_cell += 2 if opts.interpolated else 1
            i += 1
        cells = math.ceil(opts.size / stride)
        for y in range(cells):
            for x in range(cells):
                out.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell)
    return np.asarray(out, np.float32)


def checked_model(name: str) -> Path:
    """The shipped model file, after checking its SHA-256 against SHA256SUMS (a damaged or swapped file is
    an error, never a silent wrong answer)."""
    path = MODEL_DIR / name
    sums = dict(
        reversed(line.split()) for line in (MODEL_DIR / "SHA256SUMS").read_text("utf-8").splitlines() if line.strip()
    )
    if not path.is_file() or name not in sums:
        raise EngineMissing(f"detect: model {name} is missing from {MODEL_DIR}; reinstall ollama-vision-router")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sums[name]:
        raise EngineMissing(f"detect: model {name} fails its checksum (got {digest[:12]}...); reinstall the package")
    return path


@dataclass
class Detection:
    """One detection in image pixels: box (x1, y1, x2, y2), score, keypoints (k x 2)."""

    box: np.ndarray
    score: float
    keypoints: np.ndarray


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """The image fitted into a size x size square, centred, padded black, in [-1, 1] (MediaPipe's
    ImageToTensor with keep_aspect_ratio); and the scale and padding to map boxes back."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[py : py + nh, px : px + nw] = resized
    return canvas.astype(np.float32) / 127.5 - 1.0, scale, float(px), float(py)


def decode(
    raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray, opts: SsdOptions, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (x1, y1, x2, y2), scores and keypoints in the model's input pixels, for scores >= min_score
    (MediaPipe's TensorsToDetections: x, y, w, h order; offsets relative to the anchor centre)."""
    # The logistic function, written with tanh so that large logits do not overflow exp in float32.
    scores = 0.5 * (1.0 + np.tanh(0.5 * np.clip(logits.reshape(-1), -100.0, 100.0)))
    keep = scores >= min_score
    raw, anchors, scores = raw[keep], anchors[keep], scores[keep]
    s = float(opts.size)
    cx = raw[:, 0] + anchors[:, 0] * s
    cy = raw[:, 1] + anchors[:, 1] * s
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kp = raw[:, 4 : 4 + 2 * opts.keypoints].reshape(-1, opts.keypoints, 2) + anchors[:, None, :] * s
    return boxes, scores, kp


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(dets: list[Detection], iou: float = NMS_IOU) -> list[Detection]:
    """MediaPipe's WEIGHTED non-maximum suppression: each cluster of boxes overlapping the best one by more
    than ``iou`` becomes one detection, its box and keypoints the score-weighted mean of the cluster."""
    if not dets:
        return []
    order = sorted(dets, key=lambda d: -d.score)
    boxes = np.stack([d.box for d in order])
    scores = np.asarray([d.score for d in order])
    kps = np.stack([d.keypoints for d in order])
    alive = np.ones(len(order), bool)
    out = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        members = alive & (_iou(boxes[i], boxes) > iou)
        members[i] = True
        wts = scores[members][:, None]
        box = (boxes[members] * wts).sum(0) / wts.sum()
        kp = (kps[members] * wts[:, :, None]).sum(0) / wts.sum()
        out.append(Detection(box, float(scores[i]), kp))
        alive &= ~members
    return out


TILE_SIDE = 0.6  # tile side, as a share of the picture's shorter side
TILE_OVERLAP = 0.2  # so that a person cut by one tile's edge is whole in the next


def tiles(w: int, h: int, size: int) -> list[tuple[int, int, int, int]]:
    """Where to look: the whole image, then, for pictures much larger than the model's input, square
    windows 0.6 of the shorter side overlapping by a fifth (a 640 x 480 photo: 6 windows), where people and
    faces a sixth of the picture's height or smaller appear large enough to the model. Measured on the
    real people set: whole image alone finds 9 of 29 people, with these windows 21 (vtest pedestrians)."""
    out = [(0, 0, w, h)]
    if min(w, h) < 1.4 * size:
        return out
    side = int(min(w, h) * TILE_SIDE)
    step = max(1, int(side * (1 - TILE_OVERLAP)))
    xs = list(range(0, w - side + 1, step))
    ys = list(range(0, h - side + 1, step))
    xs += [w - side] if xs[-1] + side < w else []
    ys += [h - side] if ys[-1] + side < h else []
    return out + [(x, y, x + side, y + side) for y in ys for x in xs]


class BlazeBackend(Backend):
    """Faces (BlazeFace short + full range) and people (BlazePose detector + selfie segmentation)."""

    name = "mediapipe"
    labels = ("face", "person")
    engine = "MediaPipe BlazeFace / BlazePose (LiteRT)"
    learned = True

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return False, f"LiteRT is not installed: {EXTRA_HINT}"
        names = [FACE_SHORT.file, FACE_FULL.file, POSE.file, SELFIE]
        missing = [n for n in names if not (MODEL_DIR / n).is_file()]
        if missing:
            return False, f"model files missing from {MODEL_DIR}: {', '.join(missing)}"
        return True, ""

    # --- engines ----------------------------------------------------------------------------------
    def _interpreter(self, file: str) -> tuple[Any, Any]:
        def build() -> Any:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError as exc:  # pragma: no cover - available() said it was there
                raise EngineMissing(f"detect: {EXTRA_HINT}") from exc
            it = Interpreter(model_path=str(checked_model(file)), num_threads=2)
            it.allocate_tensors()
            return it

        return self._get(file, build)

    def _run(self, file: str, tensor: np.ndarray) -> list[np.ndarray]:
        it, lock = self._interpreter(file)
        with lock:  # one inference at a time per interpreter: its tensors are shared scratch space
            it.set_tensor(it.get_input_details()[0]["index"], tensor[None])
            it.invoke()
            return [it.get_tensor(d["index"])[0].copy() for d in it.get_output_details()]

    def ssd(self, rgb: np.ndarray, opts: SsdOptions, window: tuple[int, int, int, int]) -> list[Detection]:
        """One SSD detector on one window of the image; detections in image pixels."""
        x0, y0, x1, y1 = window
        tensor, scale, px, py = letterbox(np.ascontiguousarray(rgb[y0:y1, x0:x1]), opts.size)
        outs = self._run(opts.file, tensor)
        raw, logits = (outs[0], outs[1]) if outs[0].shape[-1] > 1 else (outs[1], outs[0])
        boxes, scores, kps = decode(raw, logits, self._anchors(opts), opts, opts.min_score)
        boxes = (boxes - [px, py, px, py]) / scale + [x0, y0, x0, y0]
        kps = (kps - [px, py]) / scale + [x0, y0]
        return [Detection(b, float(s), k) for b, s, k in zip(boxes, scores, kps, strict=True)]

    def _anchors(self, opts: SsdOptions) -> np.ndarray:
        return self._get(f"anchors:{opts.file}", lambda: ssd_anchors(opts))[0]

    # --- faces -------------------------------------------------------------------------------------
    def faces(self, rgb: np.ndarray, small: bool = True) -> list[Detection]:
        """Faces at any size: short range on the whole image (close-ups), full range on the whole image
        and (``small``) on tiles for faces further away, merged by weighted NMS."""
        h, w = rgb.shape[:2]
        found = self.ssd(rgb, FACE_SHORT, (0, 0, w, h))
        for win in tiles(w, h, FACE_FULL.size) if small else [(0, 0, w, h)]:
            found += self.ssd(rgb, FACE_FULL, win)
        return weighted_nms(found)

    # --- people ------------------------------------------------------------------------------------
    def people(self, rgb: np.ndarray) -> list[BBox]:
        """People: BlazePose detections (whole image and tiles) and faces without one, each box fitted to
        the person's pixels by selfie segmentation inside the region the detection implies."""
        h, w = rgb.shape[:2]
        poses: list[Detection] = []
        for win in tiles(w, h, POSE.size):
            poses += self.ssd(rgb, POSE, win)
        poses = weighted_nms(poses)
        # (region to search, a point on the person, a box the person must hold, score)
        regions: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, float]] = [
            (_pose_region(d, w, h), d.keypoints[2], None, d.score) for d in poses
        ]
        # A person whose body the pose detector missed (a close-up, a face turned to the camera) is found
        # by the face; whole-image face passes suffice, as a face too small for them has a body to find.
        for f in self.faces(rgb, small=False):
            if not any(_inside(f.box, r[0]) > 0.5 for r in regions):
                centre = np.array([(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2])
                regions.append((_face_region(f.box, w, h), centre, f.box, f.score))
        fitted = [(self._fit(rgb, region, seed, hold), score) for region, seed, hold, score in regions]
        # A second look from a tile can see part of a person (hands, a torso) as a person: a box lying mostly
        # inside a larger person's box is that person, whatever its score.
        out: list[BBox] = []
        for box, score in sorted(fitted, key=lambda f: -(f[0][2] - f[0][0]) * (f[0][3] - f[0][1])):
            arr = np.asarray(box)
            if any(_inside(arr, np.asarray([k.x1, k.y1, k.x2, k.y2])) > CONTAINED for k in out):
                continue
            out.append(BBox(label="person", x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=round(score, 4)))
        return out

    def _fit(self, rgb: np.ndarray, region: np.ndarray, seed: np.ndarray, hold: np.ndarray | None) -> list[float]:
        """The box of the person's pixels (selfie segmentation) in ``region``: the mask part at ``seed`` (a
        point on the person), else the largest; grown to ``hold`` (a face box) when given. The region itself
        where the mask finds nobody."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = (int(round(v)) for v in region)
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        if crop.size == 0:
            return [float(v) for v in region]
        tensor = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        prob = self._run(SELFIE, tensor)[0][..., 0]
        mask = (cv2.resize(prob, (x1 - x0, y1 - y0)) > 0.5).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        sx_, sy_ = int(np.clip(seed[0] - x0, 0, x1 - x0 - 1)), int(np.clip(seed[1] - y0, 0, y1 - y0 - 1))
        k = labels[sy_, sx_]
        if k == 0 and n > 1:  # the seed is not in the mask: the largest part is the person
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if k == 0 or stats[k, cv2.CC_STAT_AREA] < 0.02 * mask.size:
            box = [float(v) for v in region]
        else:
            sx, sy, sw, sh = stats[k, :4]
            box = [float(x0 + sx), float(y0 + sy), float(x0 + sx + sw), float(y0 + sy + sh)]
        if hold is not None:
            box = [min(box[0], hold[0]), min(box[1], hold[1]), max(box[2], hold[2]), max(box[3], hold[3])]
        return [round(float(np.clip(v, 0, lim)), 1) for v, lim in zip(box, (w, h, w, h), strict=True)]

    # --- the backend -------------------------------------------------------------------------------
    def detect(self, bgr: np.ndarray, label: str, texts: list[TextLine]) -> list[BBox]:
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        if label == "person":
            return self.people(rgb)
        h, w = rgb.shape[:2]
        out = []
        for d in self.faces(rgb):
            x1, y1, x2, y2 = (float(np.clip(v, 0, lim)) for v, lim in zip(d.box, (w, h, w, h), strict=True))
            out.append(
                BBox(
                    label="face",
                    x1=round(x1, 1),
                    y1=round(y1, 1),
                    x2=round(x2, 1),
                    y2=round(y2, 1),
                    score=round(d.score, 4),
                )
            )
        return out


def _pose_region(d: Detection, w: int, h: int) -> np.ndarray:
    """The full-body region of a BlazePose detection, as MediaPipe's pose_detection_to_roi: a square
    centred on the mid-hip keypoint, side twice the distance to the full-body circle point, times 1.25;
    grown to hold the face box, clipped to the image."""
    centre, edge = d.keypoints[0], d.keypoints[1]
    half = float(np.hypot(*(edge - centre))) * 1.25
    box = np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])
    box = np.array([min(box[0], d.box[0]), min(box[1], d.box[1]), max(box[2], d.box[2]), max(box[3], d.box[3])])
    return np.clip(box, 0, [w, h, w, h])


def _face_region(face: np.ndarray, w: int, h: int) -> np.ndarray:
    """Where a person seen only by the face can be: three faces wide, from just above the head down to
    six faces below (a head-and-shoulders portrait or an upper body), clipped to the image."""
    fw, fh = face[2] - face[0], face[3] - face[1]
    cx = (face[0] + face[2]) / 2
    box = np.array([cx - 1.6 * fw, face[1] - 0.5 * fh, cx + 1.6 * fw, face[3] + 6.0 * fh])
    return np.clip(box, 0, [w, h, w, h])


def _inside(box: np.ndarray, region: np.ndarray) -> float:
    """Share of ``box`` inside ``region``."""
    iw = max(0.0, min(box[2], region[2]) - max(box[0], region[0]))
    ih = max(0.0, min(box[3], region[3]) - max(box[1], region[1]))
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    return float(iw * ih / area)

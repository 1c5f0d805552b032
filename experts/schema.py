"""The result schema shared by every expert, the router and remote expert services.

One :class:`ExpertResult` per (image, expert, args); :class:`ImageAnalysis` merges them per image.
All models are plain pydantic: JSON in and out, the same over HTTP.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field


class BBox(BaseModel):
    """A labelled box in pixel coordinates of the (EXIF-transposed) image."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None = None


class TextLine(BaseModel):
    """One recognised line of text: its quadrilateral ``box`` and axis-aligned ``bbox``."""

    text: str
    score: float
    box: list[list[float]] = Field(default_factory=list, description="4 points [[x, y], ...], clockwise")
    bbox: list[float] = Field(default_factory=list, description="[x1, y1, x2, y2]")
    cell: list[int] | None = Field(
        default=None, description="[table, row, column] when the line is in a table cell, from 0 in reading order"
    )


class Style(BaseModel):
    """A style or zero-shot label with its similarity score."""

    name: str
    score: float
    name_zh: str | None = None


class Findings(BaseModel):
    """What can be known about an image: the fields one expert fills and the per-image merge shares."""

    caption: str | None = None
    objects: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    bbox: list[BBox] = Field(default_factory=list)
    text: list[TextLine] = Field(default_factory=list)
    full_text: str | None = None
    styles: list[Style] = Field(default_factory=list)
    measurements: dict[str, Any] = Field(default_factory=dict)


class ExpertResult(Findings):
    """What one expert found on one image."""

    image_id: str
    expert: str
    args: dict[str, Any] = Field(default_factory=dict)
    timing_ms: float = 0.0
    cached: bool = False
    error: str | None = None
    hint: str | None = Field(
        default=None,
        description="for the user, not the model: how to get a better answer here (e.g. a detector to install)",
    )

    @classmethod
    def failure(cls, image_id: str, expert: str, args: dict[str, Any], error: str, timing_ms: float = 0.0):
        """A result that carries only an error line."""
        return cls(image_id=image_id, expert=expert, args=dict(args), error=error, timing_ms=timing_ms)


class ImageAnalysis(Findings):
    """All expert results for one image, merged into the seed's per-image schema."""

    image_id: str
    index: int = Field(description="1-based position of the image among the attached ones")
    width: int | None = None
    height: int | None = None
    timing_ms: dict[str, float] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)
    results: list[ExpertResult] = Field(default_factory=list)

    @classmethod
    def merge(
        cls,
        image_id: str,
        index: int,
        results: list[ExpertResult],
        width: int | None = None,
        height: int | None = None,
    ) -> ImageAnalysis:
        """Merge several experts' results on one image; later experts add to, never erase, earlier ones."""
        merged = cls(image_id=image_id, index=index, width=width, height=height, results=list(results))
        full_texts: list[str] = []
        line_boxes = [
            _line_box(t) for r in results if not r.error and not _is_contours(r) for t in r.text if _reads_as_text(t)
        ]
        text_boxes = [b for b in line_boxes if b]
        for r in results:
            if text_boxes and _is_contours(r) and not r.error:
                # Letters found by OCR are not shapes: the contours inside its text boxes are left out.
                r = without_shapes_in(r, text_boxes)
            key = r.expert if not r.args else f"{r.expert}({_args_label(r.args)})"
            merged.timing_ms[key] = round(r.timing_ms, 1)
            if r.error:
                merged.errors[key] = r.error
                continue
            if r.caption and not merged.caption:
                merged.caption = r.caption
            for o in r.objects:
                if o not in merged.objects:
                    merged.objects.append(o)
            merged.attributes.update(r.attributes)
            merged.bbox.extend(r.bbox)
            merged.text.extend(r.text)
            if r.full_text:
                full_texts.append(r.full_text)
            merged.styles.extend(r.styles)
            merged.measurements.update(r.measurements)
        if full_texts:
            merged.full_text = "\n".join(full_texts)
        return merged


# A contour whose box lies this much inside OCR text boxes is a letter or a word, not a shape.
INSIDE_TEXT_SHARE = 0.6


def _is_contours(r: ExpertResult) -> bool:
    """A ``detect`` result in contours or measure mode (labelled detections such as faces or QR codes are not)."""
    return r.expert == "detect" and r.attributes.get("mode") in ("contours", "measure")


_WORD = re.compile(r"[^\W_]{2,}")


def _reads_as_text(t: TextLine) -> bool:
    """A line with a word in it (two letters or digits in a row). OCR also "reads" rows of shapes, as
    "● ● ●" for discs or "Λ A A V" for triangles: lone marks like these are left to the shapes."""
    return bool(_WORD.search(t.text))


def _line_box(t: TextLine) -> list[float] | None:
    if len(t.bbox) == 4:
        return list(t.bbox)
    if t.box:
        xs, ys = [p[0] for p in t.box], [p[1] for p in t.box]
        return [min(xs), min(ys), max(xs), max(ys)]
    return None


def inside_share(box: list[float], text_boxes: list[list[float]]) -> float:
    """How much of ``box`` the text boxes cover (their overlaps with it summed, capped at 1)."""
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    if not area:
        return 0.0
    covered = 0.0
    for t in text_boxes:
        iw = min(box[2], t[2]) - max(box[0], t[0])
        ih = min(box[3], t[3]) - max(box[1], t[1])
        if iw > 0 and ih > 0:
            covered += iw * ih
    return min(covered / area, 1.0)


def without_shapes_in(r: ExpertResult, text_boxes: list[list[float]]) -> ExpertResult:
    """A contours/measure ``detect`` result without the objects lying inside OCR text boxes, its counts,
    labels, boxes, ratios and subject recomputed from what remains."""
    m = r.measurements
    objs = m.get("objects", [])
    dropped = [o for o in objs if inside_share(o["bbox"], text_boxes) >= INSIDE_TEXT_SHARE]
    if not dropped:
        return r
    gone = {tuple(o["bbox"]) for o in dropped}
    kept = [o for o in objs if tuple(o["bbox"]) not in gone]
    counts = Counter(o["shape"] for o in kept)
    total = int(m.get("count", len(objs))) - len(dropped)
    size = m.get("image") or {}
    new_m = {**m, "count": total, "counts": dict(counts), "objects": kept, "ratios": ratios_between(kept)}
    new_m["inside_text"] = len(dropped)
    new_m.pop("subject", None)
    attrs = {**r.attributes, "object_count": total}
    attrs.pop("subject_placement", None)
    if kept and size.get("width") and size.get("height"):
        new_m["subject"] = placement(kept[0], size["width"], size["height"])
        attrs["subject_placement"] = new_m["subject"]["placement"]
    marks = [x for x in r.objects if "text-like marks" in x]
    if r.attributes.get("mode") == "measure":
        # One label per listed object, in the objects' order.
        shape_labels = [x for x in r.objects if x not in marks]
        labels = [x for x, o in zip(shape_labels, objs, strict=False) if tuple(o["bbox"]) not in gone]
    else:
        labels = [f"{n} {shape}{'' if n == 1 else 's'}" for shape, n in counts.most_common()]
    labels = marks + labels
    bbox = [b for b in r.bbox if (b.x1, b.y1, b.x2, b.y2) not in gone]
    return r.model_copy(update={"objects": labels, "bbox": bbox, "measurements": new_m, "attributes": attrs})


def ratios_between(objects: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """Area, width and height ratios between each pair of the ``top`` largest objects."""
    out = []
    big = objects[:top]
    for i in range(len(big)):
        for j in range(i + 1, len(big)):
            a, b = big[i], big[j]
            out.append(
                {
                    "a": a["id"],
                    "b": b["id"],
                    "area_ratio": round(a["area"] / b["area"], 3) if b["area"] else None,
                    "width_ratio": round(a["width"] / b["width"], 3) if b["width"] else None,
                    "height_ratio": round(a["height"] / b["height"], 3) if b["height"] else None,
                }
            )
    return out


def placement(obj: dict[str, Any], w: int, h: int) -> dict[str, Any]:
    """Where an object sits: its rule-of-thirds cell, a name for it, offset from the centre."""
    cx, cy = obj["centre"]
    col, row = min(int(cx / w * 3), 2), min(int(cy / h * 3), 2)
    names_r, names_c = ("top", "middle", "bottom"), ("left", "centre", "right")
    name = "centre" if (row, col) == (1, 1) else f"{names_r[row]} {names_c[col]}".replace("middle ", "")
    return {
        "object": obj["id"],
        "centre": [cx, cy],
        "thirds_cell": [row, col],
        "placement": name,
        "offset_from_centre": [round(cx / w - 0.5, 3), round(cy / h - 0.5, 3)],
        "share": obj["share"],
    }


def _args_label(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items()))

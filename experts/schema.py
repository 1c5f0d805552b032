"""The result schema shared by every expert, the router and remote expert services.

One :class:`ExpertResult` per (image, expert, args); :class:`ImageAnalysis` merges them per image.
All models are plain pydantic: JSON in and out, the same over HTTP.
"""

from __future__ import annotations

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
        cls, image_id: str, index: int, results: list[ExpertResult], width: int | None = None,
        height: int | None = None,
    ) -> ImageAnalysis:
        """Merge several experts' results on one image; later experts add to, never erase, earlier ones."""
        merged = cls(image_id=image_id, index=index, width=width, height=height, results=list(results))
        full_texts: list[str] = []
        for r in results:
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


def _args_label(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items()))

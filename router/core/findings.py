"""One short line of what the experts found, for the user (``looked at: ocr 7 lines; detect 24 objects``).

Built from the structured results, beside the context renderer (:mod:`router.core.context`), which
writes the same results at length for the model. The line is never part of the model's answer:
``ask`` prints it after the answer, the proxy adds it to the streamed answer only when configured.
"""

from __future__ import annotations

from experts.schema import ExpertResult, ImageAnalysis

MAX_QUOTE_CHARS = 40


def findings_line(analyses: list[ImageAnalysis]) -> str:
    """``looked at: ocr 7 lines; detect 24 objects`` (one image), ``looked at: image 1: ocr 7 lines |
    image 2: detect 2 faces`` (several); "" when no expert ran."""
    per_image = [(a.index, [expert_summary(r) for r in a.results]) for a in analyses]
    per_image = [(i, parts) for i, parts in per_image if parts]
    if not per_image:
        return ""
    if len(per_image) == 1 and len(analyses) == 1:
        return "looked at: " + "; ".join(per_image[0][1])
    return "looked at: " + " | ".join(f"image {i}: " + "; ".join(parts) for i, parts in per_image)


def expert_summary(r: ExpertResult) -> str:
    """What one expert run found, in a few words."""
    name = r.expert + (f" {_args(r)}" if r.args else "")
    if r.error:
        return f"{name} failed"
    if r.text:
        return f"{name} {_count(len(r.text), 'line')}"
    if r.full_text:
        return f"{name} {_count(len(r.full_text.splitlines()), 'line')}"
    if r.expert == "ocr":
        return f"{name} no text"
    if r.caption:
        return f"{name} {_quote(r.caption)}"
    if r.styles:
        top = max(r.styles, key=lambda s: s.score)
        return f"{name} {top.name} {top.score:.2f}"
    count = r.measurements.get("count")
    if isinstance(count, int) and not isinstance(count, bool):
        return f"{name} {_count(count, 'object')}"
    if r.bbox:
        return f"{name} {_count(len(r.bbox), 'object')}"
    if r.objects:
        return f"{name} {', '.join(r.objects[:3])}"
    return f"{name} nothing found"


def _args(r: ExpertResult) -> str:
    # detect "person" reads better than detect query=person; several args as key=value.
    if len(r.args) == 1:
        return _quote(str(next(iter(r.args.values()))))
    return ", ".join(f"{k}={v}" for k, v in sorted(r.args.items()))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _quote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_QUOTE_CHARS:
        text = text[: MAX_QUOTE_CHARS - 1] + "…"
    return f'"{text}"'

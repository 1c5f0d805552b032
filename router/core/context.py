"""Renders expert results as the ``[IMAGE CONTEXT]`` block the model reads in its next turn.

Compact (a 4B model's context is precious), one section per image, and every string an expert
produced is quoted and neutralised: OCR'd text saying ``[VISION: ...]`` or ``[/IMAGE CONTEXT]`` is
data, never an instruction.
"""

from __future__ import annotations

import json
import re
from typing import Any

from experts.schema import ImageAnalysis, TextLine
from router.core.tags import neutralize

MAX_TEXT_LINES = 40
MAX_BOXES = 20
MAX_VALUE_CHARS = 400

_BLOCK_RE = re.compile(r"\[\s*(/?)\s*IMAGE CONTEXT\s*\]", re.IGNORECASE)


def safe(text: str) -> str:
    """Neutralise expert-produced text so it cannot open tags or close the context block."""
    return _BLOCK_RE.sub(lambda m: f"({m.group(1)}image context)", neutralize(text))


def q(text: str) -> str:
    """Quote a string as data."""
    return json.dumps(safe(text), ensure_ascii=False)


def render_context(analyses: list[ImageAnalysis], notes: list[str] | None = None) -> str:
    """The full block for all analysed images, plus notes (unknown experts, missing images...)."""
    lines = ["[IMAGE CONTEXT]"]
    for a in analyses:
        lines.extend(render_image(a))
    for note in notes or []:
        lines.append(f"Note: {safe(note)}")
    lines.append("[/IMAGE CONTEXT]")
    return "\n".join(lines)


def no_answer(analyses: list[ImageAnalysis], asked_again: bool) -> str:
    """What the user gets when the model gave no answer: that, and what the experts found."""
    why = "it kept asking for experts instead of answering" if asked_again else "its reply was empty"
    head = f"The model gave no answer ({why})."
    if not analyses:
        return f"{head} No expert ran."
    lines = [f"{head} What the experts found:"]
    for a in analyses:
        lines.extend(render_image(a))
    return "\n".join(lines)


def render_image(a: ImageAnalysis) -> list[str]:
    size = f"{a.width}x{a.height}, " if a.width and a.height else ""
    out = [f"Image {a.index} ({size}id {a.image_id[:12]}):"]
    experts_run = ", ".join(a.timing_ms) or "none"
    out.append(f"- experts: {experts_run}")
    if a.caption:
        out.append(f"- caption: {q(a.caption)}")
    if a.text:
        shown = a.text[:MAX_TEXT_LINES]
        more = len(a.text) - len(shown)
        body = " / ".join(q(item) for item in text_items(shown))
        out.append(f"- text ({len(a.text)} lines, reading order): {body}" + (f" / ... {more} more" if more else ""))
    elif a.full_text:
        out.append(f"- text: {q(a.full_text)}")
    elif any(r.expert == "ocr" and not r.error for r in a.results):
        out.append("- text: none found")
    if a.objects:
        out.append("- objects: " + ", ".join(safe(o) for o in a.objects))
    if a.bbox:
        shown_b = a.bbox[:MAX_BOXES]
        parts = []
        for b in shown_b:
            score = f" {b.score:.2f}" if b.score is not None else ""
            parts.append(f"{safe(b.label)}{score} [{b.x1:.0f},{b.y1:.0f},{b.x2:.0f},{b.y2:.0f}]")
        more = len(a.bbox) - len(shown_b)
        out.append("- boxes (x1,y1,x2,y2 px): " + "; ".join(parts) + (f"; ... {more} more" if more else ""))
    if a.styles:
        out.append(
            "- styles: "
            + ", ".join(
                f"{safe(s.name)}{'/' + safe(s.name_zh) if s.name_zh else ''} {s.score:.2f}" for s in a.styles[:8]
            )
        )
    if a.attributes:
        out.append("- attributes: " + _kv(a.attributes))
    if a.measurements:
        out.append("- measurements: " + _kv(a.measurements))
    for key, err in a.errors.items():
        out.append(f"- error ({safe(key)}): {safe(err)}")
    return out


def text_items(lines: list[TextLine]) -> list[str]:
    """Text lines as the model reads them: one item per line, except that a table row is one item with its
    cells in order, ``Question | Answer`` (a cell's wrapped lines joined by a space)."""
    items: list[str] = []
    row: tuple[int, int] | None = None
    cells: dict[int, list[str]] = {}
    for t in lines:
        key = (t.cell[0], t.cell[1]) if t.cell and len(t.cell) == 3 else None
        if key is None or key != row:
            if cells:
                items.append(" | ".join(" ".join(cells[c]) for c in sorted(cells)))
            row, cells = key, {}
        if key is None:
            items.append(t.text)
        else:
            cells.setdefault(t.cell[2], []).append(t.text)
    if cells:
        items.append(" | ".join(" ".join(cells[c]) for c in sorted(cells)))
    return items


def _kv(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        parts.append(f"{safe(str(k))}={_value(v)}")
    return "; ".join(parts)


def _value(v: Any) -> str:
    if isinstance(v, str):
        return q(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (int, bool)) or v is None:
        return json.dumps(v)
    if isinstance(v, list):
        # Whole items until the budget is spent: a model reads "... 5 more", not half an object.
        parts: list[str] = []
        used = 0
        for i, item in enumerate(v):
            text = _compact(item)
            if parts and used + len(text) > MAX_VALUE_CHARS:
                parts.append(f"... {len(v) - i} more")
                break
            parts.append(text)
            used += len(text) + 1
        return safe("[" + ",".join(parts) + "]")
    text = _compact(v)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 3] + "..."
    return safe(text)


def _compact(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)

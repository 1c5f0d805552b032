"""The ``ocr`` expert: text lines with boxes and scores, in reading order, Chinese and English.

Engines (see :mod:`experts.ocr_engines`): ``paddle`` (PaddleOCR 3.x, extra ``[ocr]``) and ``onnx``
(PP-OCRv6 small in rapidocr, extra ``[onnx]``); ``auto`` picks paddle when it is installed with its
models, else onnx. Configure with ``registry.configure("ocr", engine="onnx")`` or, for offline Paddle
models, ``text_detection_model_dir=..., text_recognition_model_dir=...``.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.cancel import check_cancelled
from experts.errors import EngineMissing
from experts.images import DecodedImage
from experts.install import install_hint
from experts.ocr_engines import OcrEngine, build_engine, choose_engine
from experts.schema import BBox, ExpertResult, TextLine
from experts.text_layout import (
    SCRIPT_LANG,
    Line,
    Segment,
    detect_script,
    find_frames,
    fix_word_spacing,
    group_lines,
    turned_over,
)


class OcrArgs(ExpertArgs):
    query: str | None = Field(
        default=None,
        description="Optional text to look for (a word, a brand, a number): says whether it appears.",
    )
    lang: str | None = Field(
        default=None,
        description="Language hint: ch (Chinese and English, the default), en, japan, korean, ...",
    )
    engine: Literal["auto", "paddle", "onnx"] = Field(
        default="auto",
        description="OCR engine; auto uses the configured one (PaddleOCR when installed, else ONNX).",
    )


class OcrExpert(Expert):
    """Read the text in an image: lines in reading order with boxes and scores, plus the full text."""

    name = "ocr"
    aliases = ("text", "read", "文字", "识别文字")
    description = (
        "Read the text in the image (OCR, Chinese and English): lines in reading order with boxes and "
        "confidence, the full text, and the script. Give a word to check whether it appears."
    )
    Args = OcrArgs
    positional = "query"
    extra = "onnx"
    # `query` only searches the lines read: 8 queries on one image share one engine pass.
    filter_args = ("query",)
    # 2: tables read row by row with cells, floated sidebars and CJK columns read as blocks (issue 18).
    # 3: lines turned over per page, not per line; drawn boxes in the layout; OpenVINO (issue 25).
    version = "3"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._engines: dict[tuple[str, str | None], OcrEngine] = {}
        self._engines_lock = threading.Lock()

    # --- engines --------------------------------------------------------------------------------
    def _requested(self, args_engine: str = "auto") -> str:
        return args_engine if args_engine != "auto" else str(self.config.get("engine") or "auto")

    def status(self) -> dict[str, Any]:
        """Which engine will serve and why; ``ok: False`` with an install hint when none can."""
        requested = self._requested()
        engine, reason = choose_engine(requested, self.config)
        out: dict[str, Any] = {
            "ok": engine is not None,
            "engine": engine,
            "requested": requested,
            "reason": reason,
        }
        if engine is None:
            out["hint"] = install_hint("onnx")
        out["loaded"] = sorted(f"{e}" + (f"/{lang}" if lang else "") for e, lang in self._engines)
        return out

    def _load(self) -> None:
        self.engine_for("auto", self.config.get("lang"))

    def engine_for(self, requested: str = "auto", lang: str | None = None) -> OcrEngine:
        """The engine serving ``requested`` (auto/paddle/onnx) and ``lang``, built once per process."""
        name, reason = choose_engine(self._requested(requested), self.config)
        if name is None:
            raise EngineMissing(f"ocr: {reason}")
        lang = lang or self.config.get("lang")
        key = (name, lang)
        engine = self._engines.get(key)
        if engine is None:
            with self._engines_lock:
                engine = self._engines.get(key)
                if engine is None:
                    engine = build_engine(name, self.config, lang)
                    self._engines[key] = engine
        return engine

    # --- work -----------------------------------------------------------------------------------
    def working_side(self, args: OcrArgs) -> int | None:
        """The engine's own working size: a bigger image arrives as a view of that size (boxes are mapped
        back), rather than whole, to be downscaled inside the engine."""
        return self.engine_for(args.engine, args.lang).max_side

    def _analyze(self, image: DecodedImage, args: OcrArgs) -> ExpertResult:
        engine = self.engine_for(args.engine, args.lang)
        bgr = image.bgr()
        segments = engine.run(bgr)
        check_cancelled()  # the engine call cannot be stopped; the layout after it can be skipped
        if segments and engine.restore_spaces:
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            for seg in segments:
                seg.text = fix_word_spacing(gray, seg)
        upside_down = bool(segments) and all(seg.upside_down for seg in segments)
        if upside_down:
            turned_over(segments, bgr.shape[1], bgr.shape[0])  # read in the order of the page turned back
        lines = group_lines(segments, frames=_frames(bgr, segments, upside_down))
        if upside_down:
            turned_over(segments, bgr.shape[1], bgr.shape[0])  # boxes in the image's own pixels again
        text_lines = [_text_line(line) for line in lines]
        full_text = "\n".join(t.text for t in text_lines)
        script, counts = detect_script(full_text)
        attributes: dict[str, Any] = {
            "ocr_engine": engine.name,
            "has_text": bool(text_lines),
            "line_count": len(text_lines),
            "script": script,
        }
        tables = len({line.cell[0] for line in lines if line.cell is not None})
        if tables:
            attributes["tables"] = tables
        blocks = len({line.block for line in lines})
        if blocks > 1:
            # Columns, table cells, sidebars and separate labels: which block each line (in order) belongs to.
            attributes["blocks"] = blocks
            attributes["line_blocks"] = [line.block for line in lines]
        if upside_down:
            attributes["upside_down"] = True
        if script in SCRIPT_LANG:
            attributes["language"] = SCRIPT_LANG[script]
        elif script == "mixed":
            attributes["language"] = "+".join(
                SCRIPT_LANG.get(s, s) for s, _ in sorted(counts.items(), key=lambda kv: -kv[1])
            )
        return self.new_result(image, text=text_lines, full_text=full_text or None, attributes=attributes)

    def refine(self, result: ExpertResult, args: OcrArgs) -> ExpertResult:  # type: ignore[override]
        """Say whether ``query`` appears in the lines the pass read."""
        if args.query:
            _apply_query(result, args.query, result.text)
        return result


def _frames(bgr: np.ndarray, segments: list[Segment], upside_down: bool) -> list[tuple[float, float, float, float]]:
    """The boxes drawn on the page (sidebars, notes, table cells), in the frame the segments are in."""
    if not segments:
        return []
    h, w = bgr.shape[:2]
    height = float(np.median([s.y2 - s.y1 for s in segments]))
    frames = find_frames(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), height)
    if upside_down:
        frames = [(w - x2, h - y2, w - x1, h - y1) for x1, y1, x2, y2 in frames]
    return frames


def _text_line(line: Line) -> TextLine:
    return TextLine(
        text=line.text,
        score=round(line.score, 4),
        box=[[round(x, 1), round(y, 1)] for x, y in line.quad()],
        bbox=[round(v, 1) for v in line.bbox()],
        cell=list(line.cell) if line.cell is not None else None,
    )


def _squash(s: str) -> str:
    return "".join(s.split()).casefold()


def _apply_query(result: ExpertResult, query: str, lines: list[TextLine]) -> None:
    """Say whether ``query`` appears (case and spacing ignored) and box the lines where it does."""
    q = _squash(query)
    matches = [t for t in lines if q and q in _squash(t.text)]
    if not matches and q and q in _squash("".join(t.text for t in lines)):
        matches = list(lines)  # found only across a line break: the whole text is the match
    result.attributes["query"] = query
    result.attributes["query_found"] = bool(matches)
    result.attributes["query_matches"] = [t.text for t in matches]
    result.bbox = [
        BBox(label=f"text: {query}", x1=t.bbox[0], y1=t.bbox[1], x2=t.bbox[2], y2=t.bbox[3], score=t.score)
        for t in matches
        if len(t.bbox) == 4
    ]


def raw_engine_call(expert: OcrExpert, image: DecodedImage) -> Any:
    """The engine call the expert makes, alone (for the overhead benchmark)."""
    return expert.engine_for().raw(np.ascontiguousarray(image.bgr()))

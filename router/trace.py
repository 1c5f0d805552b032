"""The trace of one request: keywords matched, tags parsed, experts run (timings, cache hits),
LLM calls (token counts); as JSON (pydantic) and as a compact human table."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field


class TraceExpert(BaseModel):
    expert: str
    image: int
    args: dict[str, Any] = Field(default_factory=dict)
    source: str
    timing_ms: float
    cached: bool
    error: str | None = None


class LLMCall(BaseModel):
    turn: int
    prompt_eval_count: int = 0
    eval_count: int = 0
    total_ms: float = 0.0
    first_token_ms: float | None = None
    tags: list[str] = Field(default_factory=list)


class Trace(BaseModel):
    """The decision path of one request."""

    model: str
    images: list[dict[str, Any]] = Field(default_factory=list)
    keywords: list[dict[str, Any]] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    ignored_tags: list[str] = Field(default_factory=list)
    malformed_tags: list[str] = Field(default_factory=list)
    experts: list[TraceExpert] = Field(default_factory=list)
    llm_calls: list[LLMCall] = Field(default_factory=list)
    rounds: int = 0
    fallback: bool = False
    protocol_injected: bool = False
    cache: dict[str, Any] = Field(default_factory=dict)
    total_ms: float = 0.0


def render_trace(trace: Trace) -> str:
    """A compact, human-readable table of the decision path."""
    lines = [f"trace: model {trace.model}, {len(trace.images)} image(s), {trace.rounds} expert round(s), "
             f"{len(trace.llm_calls)} LLM call(s), {trace.total_ms:.0f} ms"]
    if trace.protocol_injected:
        lines.append("  protocol: tag protocol sent as a system message")
    for k in trace.keywords:
        args = f" {json.dumps(k['args'], ensure_ascii=False)}" if k.get("args") else ""
        lines.append(f"  keyword  {k['keyword']!r} -> {k['expert']}{args}")
    for t in trace.tags:
        lines.append(f"  tag      {t}")
    for t in trace.ignored_tags:
        lines.append(f"  ignored  {t} (no rounds left)")
    for t in trace.malformed_tags:
        lines.append(f"  malformed {t}")
    if trace.fallback:
        lines.append("  fallback experts ran (nobody asked)")
    if trace.experts:
        lines.append(f"  {'expert':<10} {'image':>5} {'source':<8} {'ms':>9} {'cache':<5} result")
        for e in trace.experts:
            args = " " + json.dumps(e.args, ensure_ascii=False) if e.args else ""
            status = f"error: {e.error}" if e.error else "ok"
            lines.append(
                f"  {e.expert + args:<10} {e.image:>5} {e.source:<8} {e.timing_ms:>9.1f} "
                f"{'hit' if e.cached else 'miss':<5} {status}"
            )
    for c in trace.llm_calls:
        first = f", first token {c.first_token_ms:.0f} ms" if c.first_token_ms is not None else ""
        tags = f", asked {', '.join(c.tags)}" if c.tags else ""
        lines.append(
            f"  llm turn {c.turn}: {c.prompt_eval_count} prompt + {c.eval_count} output tokens, "
            f"{c.total_ms:.0f} ms{first}{tags}"
        )
    if trace.cache:
        c = trace.cache
        lines.append(f"  cache: {c.get('hits', 0)} hits / {c.get('misses', 0)} misses (process totals)")
    return "\n".join(lines)


def trace_json(trace: Trace) -> dict[str, Any]:
    return trace.model_dump(mode="json")

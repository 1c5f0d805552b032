"""The trace of one request: keywords matched, tags parsed, experts run (timings, cache hits),
LLM calls (token counts); as JSON (pydantic) and as a compact human table."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

MAX_SKIPPED_ROWS = 10  # a reply with thousands of tags must not make a thousand-line table


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
    tool_calls: list[str] = Field(default_factory=list, description="names of native tool calls (tools protocol)")


class Trace(BaseModel):
    """The decision path of one request."""

    model: str
    images: list[dict[str, Any]] = Field(default_factory=list)
    keywords: list[dict[str, Any]] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    ignored_tags: list[str] = Field(default_factory=list)
    malformed_tags: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="expert requests over the caps, not run")
    experts: list[TraceExpert] = Field(default_factory=list)
    llm_calls: list[LLMCall] = Field(default_factory=list)
    rounds: int = 0
    fallback: bool = False
    semantic: dict[str, Any] | None = Field(None, description="the semantic router's decision, when it was asked")
    filtered: list[dict[str, Any]] = Field(
        default_factory=list, description="what the answer filter took out of the model's text, and why"
    )
    protocol_injected: bool = False
    system_prompts: list[str] = Field(
        default_factory=list,
        description="the system messages the router sent, in order, by name: the answer prompt, the tag or tools "
        "protocol, the no-experts prompt (a later one took the earlier one's place)",
    )
    cache: dict[str, Any] = Field(default_factory=dict)
    total_ms: float = 0.0

    def sent_system(self, prompt: str) -> None:
        """Record a system message the router sent (or put in place of the one it sent before)."""
        self.protocol_injected = True
        self.system_prompts.append(prompt_name(prompt))


def prompt_name(prompt: str) -> str:
    """Which of the router's system prompts ``prompt`` is, in a few words."""
    from router.core import protocol

    if prompt == protocol.ANSWER_PROMPT:
        return "answer prompt (the findings, no tags)"
    if prompt == protocol.NO_EXPERTS_PROMPT:
        return "no-experts prompt"
    if protocol.PROTOCOL_MARKER in prompt:
        return "tag protocol"
    if "vision_" in prompt:
        return "tools protocol"
    return "system prompt"


def render_trace(trace: Trace) -> str:
    """A compact, human-readable table of the decision path: what matched, who asked for which
    expert, what ran (timings, cache hits, errors) and what the LLM calls cost."""
    tokens_in = sum(c.prompt_eval_count for c in trace.llm_calls)
    tokens_out = sum(c.eval_count for c in trace.llm_calls)
    images = ", ".join(
        f"{i.get('width', '?')}x{i.get('height', '?')} {i.get('format', '')}".rstrip() for i in trace.images
    )
    head = (
        f"trace: {trace.model} | {_n(len(trace.images), 'image')}"
        + (f" ({images})" if images else "")
        + f" | {_n(trace.rounds, 'expert round')} | {_n(len(trace.llm_calls), 'LLM call')}"
        + f" ({tokens_in} prompt + {tokens_out} output tokens) | {trace.total_ms:.0f} ms"
    )
    lines = [head] + [f"  {k:<10} {v}" for k, v in _decision_rows(trace)]

    if trace.experts:
        table = [("expert", "image", "asked by", "ms", "cache", "result")]
        for e in trace.experts:
            label = e.expert + (f" {_args(e.args)}" if e.args else "")
            table.append(
                (
                    _clip(label, 32),
                    str(e.image),
                    e.source,
                    f"{e.timing_ms:.1f}",
                    "hit" if e.cached else "miss",
                    f"error: {_clip(e.error, 60)}" if e.error else "ok",
                )
            )
        lines.append("  experts")
        lines.extend("    " + r for r in _table(table, right=frozenset({1, 3})))
    if trace.llm_calls:
        table = [("turn", "prompt tok", "output tok", "ms", "first token ms", "asked for")]
        for c in trace.llm_calls:
            asked = ", ".join([*c.tags, *(f"{n}()" for n in c.tool_calls)]) or "-"
            table.append(
                (
                    str(c.turn),
                    str(c.prompt_eval_count),
                    str(c.eval_count),
                    f"{c.total_ms:.0f}",
                    f"{c.first_token_ms:.0f}" if c.first_token_ms is not None else "-",
                    _clip(asked, 60),
                )
            )
        if len(trace.llm_calls) > 1:
            table.append(
                ("all", str(tokens_in), str(tokens_out), f"{sum(c.total_ms for c in trace.llm_calls):.0f}", "", "")
            )
        lines.append("  llm calls")
        lines.extend("    " + r for r in _table(table, right=frozenset({0, 1, 2, 3, 4})))
    if trace.cache:
        c = trace.cache
        hits = sum(1 for e in trace.experts if e.cached)
        lines.append(
            f"  cache      this request {hits}/{len(trace.experts)} hits; process "
            f"{c.get('hits', 0)} hits / {c.get('misses', 0)} misses"
        )
    return "\n".join(lines)


def _decision_rows(trace: Trace) -> list[tuple[str, str]]:
    """What matched, who asked for which expert, what was ignored or skipped."""
    rows: list[tuple[str, str]] = []
    if trace.protocol_injected:
        sent = ", then ".join(trace.system_prompts) or "a system prompt"
        rows.append(("protocol", f"{sent} sent as a system message"))
    for k in trace.keywords:
        args = f" {_args(k.get('args') or {})}" if k.get("args") else ""
        rows.append(("keyword", f"{k.get('keyword', '')!r} -> {k.get('expert', '')}{args}"))
    if trace.semantic:
        rows.append(("semantic", _semantic_row(trace.semantic)))
    for t in trace.tags:
        rows.append(("tag", t))
    for t in trace.ignored_tags:
        rows.append(("ignored", f"{t} (no expert rounds left)"))
    for t in trace.malformed_tags:
        rows.append(("malformed", t))
    for t in trace.skipped[:MAX_SKIPPED_ROWS]:
        rows.append(("skipped", t))
    if len(trace.skipped) > MAX_SKIPPED_ROWS:
        rows.append(("skipped", f"... {len(trace.skipped) - MAX_SKIPPED_ROWS} more"))
    if trace.fallback:
        rows.append(("fallback", "nobody decided: the fallback experts ran before the model's answer"))
    for f in trace.filtered[:MAX_SKIPPED_ROWS]:
        rows.append(("filtered", f"{f.get('why', '')}: {_clip(repr(f.get('text', '')), 70)}"))
    if len(trace.filtered) > MAX_SKIPPED_ROWS:
        rows.append(("filtered", f"... {len(trace.filtered) - MAX_SKIPPED_ROWS} more"))
    if not (trace.keywords or trace.tags or trace.fallback or trace.experts or trace.semantic):
        rows.append(("decision", "no expert was asked for"))
    return rows


def _semantic_row(d: dict[str, Any]) -> str:
    calls = ", ".join(c["expert"] + (f" {_args(c['args'])}" if c.get("args") else "") for c in d.get("calls", []))
    how = f"confidence {d.get('confidence', 0):.2f}, {d.get('ms', 0):.1f} ms"
    if d.get("decided"):
        return f"{d.get('route')!r} -> {calls or 'no expert needed'} ({how})"
    return f"abstained: nearest {d.get('route')!r}, then {d.get('runner_up')!r} ({how})"


def trace_json(trace: Trace) -> dict[str, Any]:
    """The whole trace as JSON-ready data."""
    return trace.model_dump(mode="json")


def trace_summary(trace: Trace) -> dict[str, Any]:
    """A few numbers per request, for metrics endpoints and logs."""
    return {
        "model": trace.model,
        "images": len(trace.images),
        "keywords": [k.get("expert") for k in trace.keywords],
        "tags": len(trace.tags),
        "malformed_tags": len(trace.malformed_tags),
        "ignored_tags": len(trace.ignored_tags),
        "experts": len(trace.experts),
        "expert_errors": sum(1 for e in trace.experts if e.error),
        "cache_hits": sum(1 for e in trace.experts if e.cached),
        "expert_ms": round(sum(e.timing_ms for e in trace.experts), 2),
        "llm_calls": len(trace.llm_calls),
        "prompt_tokens": sum(c.prompt_eval_count for c in trace.llm_calls),
        "output_tokens": sum(c.eval_count for c in trace.llm_calls),
        "rounds": trace.rounds,
        "fallback": trace.fallback,
        "semantic": (trace.semantic or {}).get("route") if (trace.semantic or {}).get("decided") else None,
        "filtered": len(trace.filtered),
        "total_ms": trace.total_ms,
    }


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _args(args: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) or ' ' in v else v}"
        for k, v in sorted(args.items())
    )


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[tuple[str, ...]], right: frozenset[int] = frozenset()) -> list[str]:
    """Align columns; ``right`` holds the indexes of right-aligned (numeric) columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return out

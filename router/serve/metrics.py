"""The proxy's counters, served at ``/_vision/metrics``."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from router.core.orchestrator import Final
from router.serve.codecs.native import now_rfc3339


class Metrics:
    """Counters for ``/_vision/metrics``."""

    def __init__(self, recent: int) -> None:
        self.started = time.time()
        self.requests: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.inflight = 0
        self.client_disconnects = 0
        self.upstream_errors = 0
        self.upstream_retries = 0
        self.stream_errors = 0
        self.experts: dict[str, dict[str, float]] = {}
        self.llm_turns = 0
        self.decided_by: dict[str, int] = {}  # which decider chose the experts of routed requests
        self.filtered = 0  # pieces the answer filter took out of answers
        self.traces: deque[dict[str, Any]] = deque(maxlen=max(0, recent))

    def count(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1

    def status(self, code: int) -> None:
        k = str(code)
        self.statuses[k] = self.statuses.get(k, 0) + 1

    def final(self, route: str, final: Final) -> None:
        t = final.trace
        self.llm_turns += len(t.llm_calls)
        self.filtered += len(t.filtered)
        if t.images:
            who = _decider(t)
            self.decided_by[who] = self.decided_by.get(who, 0) + 1
        for e in t.experts:
            s = self.experts.setdefault(e.expert, {"runs": 0, "errors": 0, "cached": 0, "total_ms": 0.0, "max_ms": 0.0})
            s["runs"] += 1
            s["errors"] += 1 if e.error else 0
            s["cached"] += 1 if e.cached else 0
            s["total_ms"] += e.timing_ms
            s["max_ms"] = max(s["max_ms"], e.timing_ms)
        if self.traces.maxlen:
            self.traces.append(
                {"time": now_rfc3339(), "route": route, "model": final.model, "trace": t.model_dump(mode="json")}
            )

    def snapshot(self, cache: dict[str, Any]) -> dict[str, Any]:
        experts = {
            name: {
                **s,
                "total_ms": round(s["total_ms"], 2),
                "max_ms": round(s["max_ms"], 2),
                "mean_ms": round(s["total_ms"] / s["runs"], 2) if s["runs"] else 0.0,
            }
            for name, s in self.experts.items()
        }
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "inflight": self.inflight,
            "client_disconnects": self.client_disconnects,
            "upstream_errors": self.upstream_errors,
            "upstream_retries": self.upstream_retries,
            "stream_errors": self.stream_errors,
            "llm_turns": self.llm_turns,
            "decided_by": dict(self.decided_by),
            "answer_filter_removals": self.filtered,
            "experts": experts,
            "cache": cache,
            "recent_traces": list(self.traces),
        }


def _decider(t: Any) -> str:
    """preset, keywords, semantic (experts or none needed), fallback (nobody decided) or model (its tags alone)."""
    if any(e.source == "preset" for e in t.experts):
        return "preset"
    if t.keywords:
        return "keywords"
    if t.semantic and t.semantic.get("decided"):
        return "semantic"
    if t.fallback:
        return "fallback"
    return "model"


__all__ = ["Metrics"]

"""The router: it turns a chat request with images into expert calls, context and the model's answer.

Layers, one folder each: ``core`` (tags, keywords, dispatch, cache, context, the run loop and its
protocols), the doors (``commands`` for the CLI, ``serve`` for the HTTP proxy) and ``apps`` (batch,
image search, presets, eval, annotations). The Python API is re-exported here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

_API = {
    "Orchestrator": "router.core.orchestrator",
    "Final": "router.core.orchestrator",
    "Settings": "router.core.config",
    "trace_summary": "router.core.trace",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import router` (and `vision-router --help`) stays cheap.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'router' has no attribute {name!r}")


__all__ = ["Final", "Orchestrator", "Settings", "__version__", "trace_summary"]

"""Every failure inside a proxied request as one user-facing error with a status: Ollama's failures
through the core's gateway mapping (:func:`router.core.upstream.upstream_error`), anything else as an
internal error whose details go to the log, not to the client."""

from __future__ import annotations

import logging

from experts.errors import VisionRouterError
from router.core.errors import UpstreamError
from router.core.upstream import UPSTREAM_ERRORS, upstream_error

log = logging.getLogger("router.serve")
UNREACHABLE_HINT = "is it running (`ollama serve`)? --upstream / OLLAMA_HOST say where"


def upstream_failure(exc: BaseException, host: str) -> UpstreamError:
    """A failure talking to Ollama, worded for the proxy's operator."""
    return upstream_error(exc, host, unreachable=UNREACHABLE_HINT)


def as_router_error(exc: BaseException, host: str) -> VisionRouterError:
    """``exc`` as an error the client may read (``status`` on it, or 500)."""
    if isinstance(exc, VisionRouterError):
        return exc
    if isinstance(exc, UPSTREAM_ERRORS):
        return upstream_failure(exc, host)
    log.error("vision-router internal error", exc_info=exc)
    return UpstreamError(f"vision-router: internal error ({type(exc).__name__}); see the server log", 500)


def status_of(exc: BaseException, default: int) -> int:
    """The HTTP status an error carries, else ``default``."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and status >= 400 else default


__all__ = ["as_router_error", "status_of", "upstream_failure"]

"""Which models the proxy gives vision: every model without native ``vision`` that can answer, narrowed
by the ``route`` and ``skip`` glob lists. Capabilities come from the orchestrator's ``/api/show`` cache
(one cache for the proxy and the run loop: asked once per model, concurrent asks shared)."""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING

import httpx

from router.core.errors import UpstreamError

if TYPE_CHECKING:
    from router.core.orchestrator import Orchestrator


def norm_model(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _match(name: str, patterns: list[str]) -> bool:
    full = norm_model(name)
    return any(fnmatch.fnmatchcase(full, norm_model(p)) or fnmatch.fnmatchcase(name, p) for p in patterns)


class ModelRoutes:
    """The routing rule, and the lookup that applies it to a model by name."""

    def __init__(self, orch: Orchestrator, route: list[str], skip: list[str]) -> None:
        self.orch = orch
        self.route = route
        self.skip = skip

    def routed_by_caps(self, name: str, caps: list[str] | None) -> bool:
        """Whether a model with these capabilities gets vision from the proxy."""
        if not name or caps is None:
            return False
        if self.skip and _match(name, self.skip):
            return False
        if self.route and not _match(name, self.route):
            return False
        # Embedding-only models cannot answer; models that already see need no help.
        return "vision" not in caps and ("completion" in caps or not caps)

    async def is_routed(self, model: str) -> bool:
        """Whether requests for ``model`` go through the experts. A model Ollama does not know (or will
        not show) is answered with Ollama's own error and status, so no image is handed on for it."""
        if not model:
            raise UpstreamError("model is required", 400)
        try:
            shown = await self.orch.show(model)
        except UpstreamError as exc:
            if exc.status < 500 and exc.detail:
                raise UpstreamError(exc.detail, exc.status) from None  # Ollama's words, as without the proxy
            raise
        return self.routed_by_caps(model, list(shown.capabilities or []))


# Percent-encoded "/", "\\", "." and NUL, and control characters once decoded.
_ENCODED_SPECIAL = re.compile(rb"%(2f|5c|2e|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[A-Za-z0-9/._:~-]*")


def path_problem(path: str, raw_path: bytes | None = None) -> str | None:
    """Why a request path is refused, or None when it is canonical.

    The proxy decides on the path it was sent (``/api/chat`` goes through the experts) but forwards through
    httpx, which normalises dot segments and reads ``//host/...`` as an authority: ``/api/../api/chat`` would
    reach Ollama's ``/api/chat`` unrouted, image bytes and all. Rather than guess what each upstream makes
    of such a path, only canonical paths are accepted: no ``.`` or ``..`` segments, no empty segments, no
    backslashes or control characters, no percent-encoded ``/``, ``\\``, ``.`` or NUL, and the path the
    upstream will be sent is the path routed on."""
    if not path.startswith("/"):
        return "it must start with /"
    if raw_path is not None and _ENCODED_SPECIAL.search(raw_path):
        return "percent-encoded '/', '\\', '.' or NUL"
    if "\\" in path or _CONTROL.search(path):
        return "a backslash or a control character"
    segments = path.split("/")[1:]
    if any(seg in (".", "..") for seg in segments):
        return "'.' or '..' segments"
    if any(seg == "" for seg in segments[:-1]):  # a trailing slash is harmless; '//' is not
        return "an empty segment ('//')"
    if _PLAIN.fullmatch(path):  # every Ollama route: nothing in it that httpx could rewrite
        return None
    try:
        sent = httpx.URL(path).path
    except httpx.InvalidURL:
        return "not a valid URL path"
    if sent != path:  # an encoded '?' or '#' would end the path early, for example
        return "characters that would change the path sent upstream"
    return None


__all__ = ["ModelRoutes", "norm_model", "path_problem"]

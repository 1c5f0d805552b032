"""Errors displayed to the user as one line. The CLI exits non-zero on them; the proxy maps them to
Ollama-shaped ``{"error": ...}`` bodies with :attr:`status`."""

from __future__ import annotations

from experts.errors import EngineMissing, ExpertError, ImageError, VisionRouterError

__all__ = [
    "EngineMissing",
    "ExpertError",
    "ImageError",
    "InvalidMessage",
    "ModelNotFound",
    "OllamaUnreachable",
    "UpstreamError",
    "VisionRouterError",
]


class UpstreamError(VisionRouterError):
    """Ollama answered with an error (or could not be asked); ``status`` is the HTTP status to pass on
    and ``detail`` Ollama's own error text, when it gave one."""

    def __init__(self, message: str, status: int = 500, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


class ModelNotFound(UpstreamError):
    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message, 404, detail)


class OllamaUnreachable(UpstreamError):
    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message, 502, detail)


class InvalidMessage(VisionRouterError):
    """A message in the request cannot be read (e.g. a malformed tool call in the history)."""

    status = 400

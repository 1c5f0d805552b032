"""Errors displayed to the user as one line. The CLI exits non-zero on them; the proxy maps them to
Ollama-shaped ``{"error": ...}`` bodies with :attr:`status`."""

from __future__ import annotations

from experts.errors import EngineMissing, ExpertError, ImageError, VisionRouterError

__all__ = [
    "EngineMissing",
    "ExpertError",
    "ImageError",
    "ModelNotFound",
    "OllamaUnreachable",
    "UpstreamError",
    "VisionRouterError",
]


class UpstreamError(VisionRouterError):
    """Ollama answered with an error; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class ModelNotFound(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


class OllamaUnreachable(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 502)

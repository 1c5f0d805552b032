"""The proxy's wire formats. A codec turns one route's request body into a :class:`Routed` request and
the orchestrator's events back into that route's chunks, final object and errors; the request pipeline
(``router.serve.pipeline``) is the same for every route.

- :mod:`router.serve.codecs.native`: Ollama's ``/api/chat`` and ``/api/generate`` (NDJSON)
- :mod:`router.serve.codecs.openai`: ``/v1/chat/completions`` (SSE)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import Response

from experts.images import DecodedImage


@dataclass
class ChatMessage:
    """One message of a routed request. ``images`` hold what the client sent (base64 text) until the
    pipeline decodes them in place: each image stays with the message it came in."""

    role: str
    content: str = ""
    images: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # thinking, tool_calls, tool_name ... as Ollama JSON

    def to_ollama(self) -> dict[str, Any]:
        """The message as the orchestrator takes it (images as :class:`DecodedImage` once decoded)."""
        out = {**self.extra, "role": self.role, "content": self.content}
        if self.images:
            out["images"] = list(self.images)
        return out

    @property
    def decoded(self) -> list[DecodedImage]:
        return [i for i in self.images if isinstance(i, DecodedImage)]


@dataclass
class Routed:
    """A request in the orchestrator's terms, whichever route it came by."""

    model: str
    messages: list[ChatMessage]
    stream: bool = True
    options: dict[str, Any] | None = None
    format: Any = None
    keep_alive: Any = None
    think: Any = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    include_usage: bool = False  # OpenAI: a usage chunk before [DONE]
    load: dict[str, Any] | None = None  # a load request: forward this (no images) instead of answering

    def image_count(self) -> int:
        return sum(len(m.images) for m in self.messages)


class Writer(Protocol):
    """Writes one response in a route's shape."""

    def chunk(self, event: Any) -> bytes | None:
        """One streamed piece for an orchestrator event (the final one ends the stream)."""

    def whole(self, events: list[Any]) -> dict[str, Any]:
        """The single object of a non-streamed answer."""

    def stream_error(self, message: str, status: int) -> bytes:
        """The last piece of a stream that failed after its first byte."""


class Codec(Protocol):
    """One route's wire format."""

    kind: str  # the metrics label: chat, generate, openai
    media_type: str  # of a streamed answer
    may_route: re.Pattern[bytes]  # bodies that cannot match are forwarded without parsing (see wire.may_hold)

    def parse(self, doc: Any) -> Routed:
        """The parsed body as a :class:`Routed` request; :class:`~router.serve.wire.BadRequest` if malformed."""

    def error(self, status: int, message: str, param: str | None = None) -> Response:
        """An error answer in the route's shape."""

    def writer(self, req: Routed) -> Writer:
        """A writer for one answer."""


__all__ = ["ChatMessage", "Codec", "Routed", "Writer"]

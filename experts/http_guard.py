"""Connection guards for uvicorn: a deadline for request headers, a cap on open connections and on
header size. Shared by every server the project runs: the proxy (``vision-router serve``), the expert
services (``vision-router expert serve``) and the MCP server over HTTP (``vision-router mcp --http``).
It lives here, with the experts, because expert services never import the router.

uvicorn times out idle keep-alive connections but not a request whose headers never finish arriving
(slowloris): 200 such clients each kept a socket and a protocol object for as long as they liked.
Here every request's headers must be complete within ``header_timeout_s`` of its first byte (or of
the connection opening), else the connection gets a 408 and is closed. Request bodies have their own
deadline in the app (see ``router.serve.proxy``), where a proper error can still be answered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_KEEP_ALIVE_S = 5.0


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Guarded:
    """Mixed in before uvicorn's HTTP protocol class (httptools or h11: both keep ``cycle``,
    ``connections``, ``loop`` and ``transport``)."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    # attributes of the uvicorn protocol this is mixed into
    cycle: Any
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting: Any = None
        self._head_bytes = 0
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.max_connections:
            self._refuse(503, "Service Unavailable", "too many open connections")
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the next request on a kept-alive connection starts
        super().data_received(data)  # type: ignore[misc]
        if self._deadline is None:
            return
        if self.cycle is not self._awaiting:  # the parser has a whole request head: the app has it now
            self._disarm()
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", "request headers too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._awaiting = self.cycle
        self._head_bytes = 0
        self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, "Request Timeout", f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message))
            self.transport.close()


def guard_options(
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
) -> dict[str, Any]:
    """uvicorn settings with the guards (pass to ``uvicorn.run`` or ``uvicorn.Config``): the guarded
    protocol, the keep-alive timeout and h11's header size cap."""
    return {
        "http": guarded_protocol(header_timeout_s, max_connections, max_header_bytes),
        "timeout_keep_alive": keep_alive_s,
        "h11_max_incomplete_event_size": max_header_bytes,
    }


def guarded_protocol(header_timeout_s: float, max_connections: int, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the guards; pass it as ``uvicorn.run(..., http=...)``."""
    attrs = {
        "header_timeout_s": header_timeout_s,
        "max_connections": max_connections,
        "max_header_bytes": max_header_bytes,
    }
    return type("GuardedHTTPProtocol", (_Guarded, AutoHTTPProtocol), attrs)


__all__ = ["guard_options", "guarded_protocol"]

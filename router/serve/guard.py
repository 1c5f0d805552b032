"""Connection guards for uvicorn (slow headers, too many connections, oversized headers): see
:mod:`experts.http_guard`, where they live so that expert services, which never import the router,
share them with the proxy and the MCP server."""

from __future__ import annotations

from experts.http_guard import guard_options, guarded_protocol

__all__ = ["guard_options", "guarded_protocol"]

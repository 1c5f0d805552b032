"""Where Ollama is: ``--ollama-host``, else ``OLLAMA_HOST``, else 127.0.0.1:11434.

Parsed exactly as the ``ollama`` client parses it (itself following the Go CLI): ``host[:port]``,
optional scheme (``http://`` alone means port 80, ``https://`` port 443), optional path prefix.
"""

from __future__ import annotations

import os

from ollama._client import _parse_host  # the client's own parser: one source of truth


def resolve_host(host: str | None = None) -> str:
    """Base URL of the Ollama server to talk to."""
    value = host if host else os.environ.get("OLLAMA_HOST", "")
    return _parse_host(value)

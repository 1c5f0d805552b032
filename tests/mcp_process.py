"""`vision-router mcp --http --port 0` started as a user starts it, for the tests that need a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_listening(host: str, port: int, within_s: float = 30) -> None:
    """Return once something accepts connections on ``host:port``; fail the test after ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port}")


def start_mcp_http(env: dict[str, str], within_s: float = 60) -> tuple[subprocess.Popen[str], str, str]:
    """Start the MCP server over HTTP on a free port with ``env`` added to this environment.

    Returns the process (the caller terminates it), the URL it announced and the line that announced it,
    once the server accepts connections."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from router.commands import main; main()", "mcp", "--http", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    deadline = time.monotonic() + within_s
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "streamable HTTP on " in line:
            url = line.split("streamable HTTP on ", 1)[1].split()[0]
            host, port = url.removeprefix("http://").removesuffix("/mcp").rsplit(":", 1)
            wait_listening(host, int(port))
            return proc, url, line
        if not line and proc.poll() is not None:
            break
    proc.terminate()
    raise AssertionError("the MCP server did not start")

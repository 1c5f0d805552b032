"""Issue 19: slow clients against `vision-router expert serve` and `vision-router mcp --http`, as the proxy
already handles them: a request whose headers never finish is answered 408 and closed within the header
deadline (10 s), and real clients are still served. Bounded: 30 connections, one loopback server each."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("starlette", reason="needs the [serve] extra")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")

import httpx  # noqa: E402

from tests.mcp_process import start_mcp_http  # noqa: E402
from tests.test_expert_service import service  # noqa: E402

SLOW = 30
HEADER_DEADLINE_S = 10.0


def _slowloris(host: str, port: int) -> list[socket.socket]:
    """Connections that stay silent, or send a request head that never ends."""
    socks = []
    for i in range(SLOW):
        s = socket.create_connection((host, port), timeout=5)
        if i % 2:
            s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    return socks


def _all_cut_off(socks: list[socket.socket], within_s: float) -> int:
    """How many of ``socks`` the server closed within ``within_s`` seconds (each answered 408 or closed)."""
    closed: set[int] = set()
    deadline = time.monotonic() + within_s
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            s.settimeout(0.01)
            try:
                data = s.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 408"):
                closed.add(i)
        time.sleep(0.1)
    for s in socks:
        s.close()
    return len(closed)


@pytest.mark.timeout(120)
def test_expert_serve_cuts_off_slow_headers(tmp_path):
    with service("echo", "--import", "tests.service_experts", tmp_path=tmp_path) as svc:
        host, port = svc.url.removeprefix("http://").split(":")
        socks = _slowloris(host, int(port))
        assert _all_cut_off(socks, HEADER_DEADLINE_S + 5) == SLOW
        assert httpx.get(f"{svc.url}/healthz", timeout=5).status_code == 200


@pytest.mark.timeout(120)
def test_mcp_http_cuts_off_slow_headers():
    pytest.importorskip("mcp", reason="needs the [mcp] extra")
    proc, url, _ = start_mcp_http({"VISION_ROUTER_EXPERTS": "detect"})
    try:
        host, port = url.removeprefix("http://").removesuffix("/mcp").split(":")
        socks = _slowloris(host, int(port))
        assert _all_cut_off(socks, HEADER_DEADLINE_S + 5) == SLOW
        assert httpx.get(url, timeout=5).status_code in (400, 405, 406)  # still answering
    finally:
        proc.terminate()
        proc.wait(timeout=10)

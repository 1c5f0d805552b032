"""`vision-router mcp --http` meets newer MCP clients: the 2026-07-28 `server/discover` probe (what the mcp 2.x SDK,
Open WebUI 0.12 among its users, sends first) gets a clean answer naming this server's handshake versions, so the
client falls back to `initialize` without a failed request; and a client leaving ends its session without a
traceback in the server's log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="needs the [mcp] extra")
pytest.importorskip("starlette", reason="needs the [serve] extra")

import httpx  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.version import SUPPORTED_PROTOCOL_VERSIONS  # noqa: E402

from router.core.config import Settings  # noqa: E402
from router.serve.local_server import LocalServer  # noqa: E402
from router.serve.mcp_server import ImagePolicy, VisionMcp, loopback_hosts  # noqa: E402
from tests.router_experts import make_registry  # noqa: E402

JSON_RPC = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
DISCOVER = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "server/discover",
    "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}


class Statuses:
    """ASGI middleware that records every response status (what a client would have logged as failed)."""

    def __init__(self, app) -> None:
        self.app = app
        self.seen: list[tuple[str, int]] = []

    async def __call__(self, scope, receive, send):
        async def record(message):
            if message["type"] == "http.response.start":
                self.seen.append((scope.get("method", ""), message["status"]))
            await send(message)

        await self.app(scope, receive, record)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mcp = VisionMcp(Settings(cache_dir=""), make_registry(), policy=ImagePolicy.for_transport("http"))
    app = Statuses(mcp.http_app(allowed_hosts=loopback_hosts()))
    srv = LocalServer(app).start()
    srv.statuses = app
    yield srv
    srv.stop()


def test_a_discover_probe_is_answered_with_the_handshake_versions(server):
    r = httpx.post(server.url + "/mcp", json=DISCOVER, headers={**JSON_RPC, "mcp-method": "server/discover"})
    assert r.status_code == 200, r.text
    assert "mcp-session-id" not in r.headers  # no session is opened for a probe
    msg = r.json()
    assert msg["id"] == 1 and "error" not in msg
    result = msg["result"]
    # Only handshake-era versions: a 2026-07-28 client reads this as "use initialize" (its SDK's fallback rule).
    assert result["supportedVersions"] == list(SUPPORTED_PROTOCOL_VERSIONS)
    assert "2026-07-28" not in result["supportedVersions"]
    assert result["capabilities"]["tools"] == {"listChanged": False}
    assert result["instructions"].startswith("Vision experts")


def test_other_session_less_posts_reach_the_sdk_untouched(server):
    # An initialize whose body is larger than the peek (JSON whitespace) is replayed in full.
    padded = json.dumps(INITIALIZE).replace(",", "," + " " * 40_000, 3).encode()
    assert len(padded) > 100_000
    r = httpx.post(server.url + "/mcp", content=padded, headers=JSON_RPC)
    assert r.status_code == 200 and r.headers.get("mcp-session-id"), r.text
    # A request that is neither, without a session: the SDK's own 400.
    r = httpx.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=JSON_RPC)
    assert r.status_code == 400
    # Not JSON at all: the SDK's parse error, as before.
    r = httpx.post(server.url + "/mcp", content=b"{nope", headers=JSON_RPC)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700


def test_a_client_leaving_logs_no_traceback(server, caplog):
    async def session() -> None:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            streamable_http_client(server.url + "/mcp", http_client=http) as (read, write, _),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            assert {t.name for t in (await s.list_tools()).tools} >= {"ocr"}
            await asyncio.sleep(0.3)  # the standalone SSE stream is open: the DELETE on exit closes it

    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            asyncio.run(asyncio.wait_for(session(), 60))
        asyncio.run(asyncio.sleep(0.5))
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [f"{r.name}: {r.getMessage()} {r.exc_info and r.exc_info[0]}" for r in noisy]


# mcp 1 and 2 cannot share one environment: the 2.x client gets a venv of its own, made once from the package
# registry and kept in the user's cache, keyed by the mcp major version and this Python's; the path is read
# now, before each test's own cache folder replaces XDG_CACHE_HOME. VISION_ROUTER_MCP2_PYTHON names another.
MCP2_SPEC = "mcp>=2,<3"
MCP2_ENV = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "vision-router-tests"
    / f"mcp2-py{sys.version_info[0]}{sys.version_info[1]}"
)
CLIENT2 = """
import asyncio, sys
from mcp import Client

async def main():
    async with Client(sys.argv[1]) as c:
        s = c.session
        print("era", "modern" if getattr(s, "discover_result", None) else "handshake")
        print("tools", sorted(t.name for t in (await c.list_tools()).tools))

asyncio.run(main())
"""


def mcp2_python(folder: Path = MCP2_ENV) -> str:
    """A Python with the mcp 2.x client: ``folder``'s venv, made (and mcp installed into it) on first use.
    Concurrent test runs wait for the one that makes it; a half-made venv is made again."""
    given = os.environ.get("VISION_ROUTER_MCP2_PYTHON")
    if given:
        return given
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    ready = folder / "mcp-version"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: one run at a time is the user's affair
            pass
        if not ready.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            for cmd in (
                [sys.executable, "-m", "venv", str(folder)],
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", MCP2_SPEC],
            ):
                made = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if made.returncode != 0:
                    pytest.fail(f"cannot make the mcp 2.x client's venv ({' '.join(cmd)}): {made.stderr[-1500:]}")
            version = subprocess.run(
                [str(python), "-c", "import importlib.metadata as m; print(m.version('mcp'))"],
                capture_output=True,
                text=True,
            )
            ready.write_text(version.stdout.strip())
    return str(python)


def test_an_mcp2_client_connects_without_a_failed_request(server):
    """The real mcp 2.x client (auto mode: discover, then initialize): it connects, and the server saw no
    4xx on the way."""
    python = mcp2_python()
    server.statuses.seen.clear()
    r = subprocess.run(
        [python, "-c", CLIENT2, server.url + "/mcp"], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "era handshake" in r.stdout and "'ocr'" in r.stdout, r.stdout
    seen = server.statuses.seen
    assert seen and all(status < 400 for _, status in seen), seen

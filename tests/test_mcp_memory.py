"""Issue 19: a rejected big image leaves nothing behind in the MCP server. Each 80 MB ``data:`` URL that
was not an image stayed resident until the next full garbage collection (the handled error's traceback
held the request's frames in a reference cycle): idle 113 MB grew to 1.2 GB over four requests. Bounded:
one server subprocess on loopback, six 24 MB requests, RSS read from /proc."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="needs the [mcp] extra")
pytest.importorskip("starlette", reason="needs the [serve] extra")

import httpx  # noqa: E402

from tests.mcp_process import start_mcp_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD_MB = 24
REQUESTS = 6


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc (Linux)")
@pytest.mark.timeout(180)
def test_rejected_big_data_urls_do_not_pile_up_in_the_server():
    proc, url, _ = start_mcp_http({"VISION_ROUTER_EXPERTS": "detect", "VISION_ROUTER_CACHE": ""})
    try:
        accept = {"Accept": "application/json, text/event-stream"}
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        with httpx.Client(timeout=120) as client:
            r = client.post(url, json=init, headers=accept)
            headers = {**accept, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
            client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            not_an_image = base64.b64encode(os.urandom(PAYLOAD_MB * 3 // 4 * 1024 * 1024)).decode()
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "detect", "arguments": {"image": "data:image/png;base64," + not_an_image}},
            }
            body = json.dumps(call).encode()
            del not_an_image, call
            after = []
            for _ in range(REQUESTS):
                r = client.post(url, content=body, headers={**headers, "content-type": "application/json"})
                assert r.status_code == 200 and "not a supported image" in r.text
                time.sleep(0.3)
                after.append(_rss_mb(proc.pid))
        growth = max(after) - after[0]
        assert growth < PAYLOAD_MB, f"RSS after each rejected request (MB): {[round(x) for x in after]}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

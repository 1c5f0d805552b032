"""Issue 19, the smaller hostile inputs: a NUL byte in an MCP path, a Host header in capitals, a --host with
spaces, a torn last JSONL line on --resume, and non-finite timeouts in config.toml. Each is one clear line (or
just works), never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from click.testing import CliRunner

from experts.base import Expert, ExpertArgs
from experts.registry import Registry
from router.apps.batch import run_batch
from router.core.config import Settings
from router.core.orchestrator import Orchestrator
from tests.conftest import png_bytes


# --- --host with spaces ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1 ", " 127.0.0.1", "local host", "127.0.0.1\t", " "])
def test_serve_refuses_a_host_with_spaces_in_one_line(monkeypatch, host):
    import uvicorn

    from router.commands.serve import serve_command

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets))
    r = CliRunner().invoke(serve_command, ["--host", host, "--upstream", "127.0.0.1:9"], obj={"config": None})
    assert r.exit_code != 0 and served == [], r.output
    assert "Traceback" not in r.output and "spaces" in r.output


@pytest.mark.parametrize("allow_remote", [False, True])
def test_bind_check_refuses_spaces_with_or_without_allow_remote(allow_remote):
    from experts.access import AccessError, check_bind_host

    with pytest.raises(AccessError, match="spaces"):
        check_bind_host("127.0.0.1 ", allow_remote)


def test_expert_serve_refuses_a_host_with_spaces(monkeypatch):
    pytest.importorskip("uvicorn", reason="needs the [serve] extra")
    import uvicorn

    from router.commands.expert_serve import serve_command

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets))
    r = CliRunner().invoke(serve_command, ["detect", "--host", "127.0.0.1 ", "--port", "9"])
    assert r.exit_code != 0 and served == [] and "spaces" in r.output and "Traceback" not in r.output


# --- non-finite numbers in config.toml ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,key",
    [
        ("expert_timeout = 1e400", "expert_timeout"),
        ("expert_timeout = inf", "expert_timeout"),
        ("expert_timeout = nan", "expert_timeout"),
        ("[serve]\nupstream_timeout = inf", "serve.upstream_timeout"),
        ("[serve]\nheader_timeout = 1e999", "serve.header_timeout"),
        ("[experts.detect]\ntimeout = inf", "experts.detect.timeout"),
    ],
)
def test_non_finite_numbers_are_refused_in_one_line(tmp_path, text, key):
    from experts.errors import VisionRouterError

    cfg = tmp_path / "config.toml"
    cfg.write_text(text + "\n", "utf-8")
    with pytest.raises(VisionRouterError) as err:
        Settings.load(cfg)
    msg = str(err.value)
    assert "\n" not in msg and f"{key}: expected a finite number" in msg, msg


# --- --resume with a torn last line -------------------------------------------------------------------------
class _Args(ExpertArgs):
    query: str | None = None


class _Ocr(Expert):
    name = "ocr"
    Args = _Args

    def _analyze(self, image, args):
        return self.new_result(image, full_text="text")


def test_resume_truncates_a_torn_last_line_so_the_file_is_jsonl_again(tmp_path):
    coll = tmp_path / "c"
    coll.mkdir()
    for i in range(4):
        (coll / f"{i}.png").write_bytes(png_bytes(20 + i, 20))
    out = tmp_path / "out.jsonl"
    reg = Registry()
    reg.register(_Ocr)
    orch = Orchestrator(Settings(cache_dir=""), registry=reg)
    run_batch([coll], orch, out=out, experts=["ocr"], progress=False)
    lines = out.read_text("utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2], "utf-8")  # a hard kill mid-write
    s = run_batch([coll], orch, out=out, experts=["ocr"], resume=True, progress=False)
    assert (s.skipped, s.done) == (2, 2)
    text = out.read_text("utf-8")
    records = [json.loads(x) for x in text.splitlines()]  # every line is whole JSON: no torn line left
    assert text.endswith("\n") and len(records) == 4
    assert len({r["path"] for r in records}) == 4


def test_resume_keeps_a_whole_last_line_that_only_lacks_its_newline(tmp_path):
    coll = tmp_path / "c"
    coll.mkdir()
    for i in range(2):
        (coll / f"{i}.png").write_bytes(png_bytes(20 + i, 20))
    out = tmp_path / "out.jsonl"
    reg = Registry()
    reg.register(_Ocr)
    orch = Orchestrator(Settings(cache_dir=""), registry=reg)
    run_batch([coll / "0.png"], orch, out=out, experts=["ocr"], progress=False)
    out.write_text(out.read_text("utf-8").rstrip("\n"), "utf-8")  # someone's editor dropped the newline
    s = run_batch([coll], orch, out=out, experts=["ocr"], resume=True, progress=False)
    assert (s.skipped, s.done) == (1, 1)
    assert len([json.loads(x) for x in out.read_text("utf-8").splitlines()]) == 2


# --- MCP: a NUL byte in a path, a Host header in capitals --------------------------------------------------
mcp = pytest.importorskip("mcp", reason="needs the [mcp] extra")


def _detect_only() -> Registry:
    from experts.detect import DetectExpert

    reg = Registry()
    reg.register(DetectExpert)
    return reg


@pytest.mark.parametrize("ref", ["/tmp/photo\x00.png", "photo\x00", "~/a\x00/b.png"])
def test_mcp_nul_byte_in_a_path_is_one_clear_tool_error(tmp_path, caplog, ref):
    from router.serve.mcp_server import ImagePolicy, VisionMcp

    server = VisionMcp(Settings(cache_dir=""), _detect_only(), policy=ImagePolicy(paths=True))
    with caplog.at_level(logging.ERROR):
        result = asyncio.run(server.call("detect", {"image": ref}))
    text = result.content[0].text
    assert result.isError and "\n" not in text
    assert "NUL" in text and "ValueError" not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no server traceback


def test_mcp_host_header_is_case_insensitive():
    pytest.importorskip("starlette", reason="needs the [serve] extra")
    import httpx

    from router.serve.local_server import LocalServer
    from router.serve.mcp_server import ImagePolicy, VisionMcp, loopback_hosts

    server = VisionMcp(Settings(cache_dir=""), _detect_only(), policy=ImagePolicy.for_transport("http"))
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    with LocalServer(server.http_app(allowed_hosts=loopback_hosts())) as s:
        port = s.url.rsplit(":", 1)[1]
        for host in (f"LOCALHOST:{port}", f"LocalHost:{port}", "LOCALHOST"):
            r = httpx.post(f"{s.url}/mcp", json=init, headers={**accept, "Host": host}, timeout=10)
            assert r.status_code == 200, (host, r.status_code, r.text)
        r = httpx.post(f"{s.url}/mcp", json=init, headers={**accept, "Host": f"EVIL.example:{port}"}, timeout=10)
        assert r.status_code == 421

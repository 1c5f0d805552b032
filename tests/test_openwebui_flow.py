"""Open WebUI through the proxy, as it behaves: it uploads the image to any Ollama model (it does not read
the `vision` capability), sends its own 36 tools with every chat, and re-sends the image with every
follow-up. The follow-up must reuse the cached expert results (no expert runs again), and the fallback
context for a text image must read as text, not as letter-shaped "polygons"."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from experts.registry import Registry, default_registry
from router.core.config import Settings
from router.serve.proxy import ProxyServer, create_app
from tests.fake_ollama import FakeOllama, Reply
from tests.test_proxy_support import MODEL, models, ndjson, no_image_bytes

skdata = pytest.importorskip("skimage.data", reason="needs scikit-image (the [test] extra) for the page scan")

# Shaped like the tools Open WebUI attaches in native function-calling mode (built-ins plus a user's tools).
OWUI_TOOL_NAMES = [
    "search_web",
    "fetch_url",
    "get_current_timestamp",
    "calculate_timestamp",
    "search_memories",
    "add_memory",
    "replace_memory_content",
    "delete_memory",
    "list_memories",
    "search_notes",
    "view_note",
    "write_note",
    "replace_note_content",
    "search_chats",
    "view_chat",
    "search_channels",
    "search_channel_messages",
    "view_channel_message",
    "view_channel_thread",
    "list_knowledge_bases",
    "search_knowledge_bases",
    "query_knowledge_bases",
    "search_knowledge_files",
    "query_knowledge_files",
    "view_knowledge_file",
    "generate_image",
    "edit_image",
    "execute_code",
    "get_weather",
    "convert_units",
    "translate_text",
    "summarize_url",
    "youtube_transcript",
    "arxiv_search",
    "wikipedia_lookup",
    "send_email",
]


def owui_tools() -> list[dict]:
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"Open WebUI tool {name}",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": []},
            },
        }
        for name in OWUI_TOOL_NAMES
    ]


def page_b64() -> str:
    buf = io.BytesIO()
    Image.fromarray(skdata.page()).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture
def stack():
    reg = Registry()
    for name in ("ocr", "detect"):
        reg.register(default_registry().expert_class(name))
    fake = FakeOllama(models()).start()
    # The default fallback (ocr, detect) and an in-memory cache: what `vision-router serve` runs with when
    # neither the keywords nor the semantic router decide (here: it is off, so every question takes that path).
    settings = Settings(cache_dir="", fallback=["ocr", "detect"], semantic=False)
    proxy = ProxyServer(create_app(settings, reg, fake.url)).start()
    yield fake, proxy
    proxy.stop()
    fake.stop()


def chat(proxy: ProxyServer, messages: list[dict]) -> str:
    body = {
        "model": MODEL,
        "messages": messages,
        "tools": owui_tools(),
        "stream": True,
        "options": {"temperature": 0.8},
    }
    r = httpx.post(f"{proxy.url}/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    chunks = ndjson(r.content)
    assert chunks[-1]["done"] is True
    return "".join(c.get("message", {}).get("content", "") for c in chunks)


def metrics(proxy: ProxyServer) -> dict:
    return httpx.get(f"{proxy.url}/_vision/metrics", timeout=10).json()


def image_context(body: dict) -> str:
    blocks = [m["content"] for m in body["messages"] if "[IMAGE CONTEXT]" in (m.get("content") or "")]
    assert blocks, json.dumps(body)[:2000]
    return blocks[-1]


def test_follow_up_reuses_the_cache_and_the_context_reads_text(stack):
    fake, proxy = stack
    image = page_b64()
    first_user = {"role": "user", "content": "Tell me about it", "images": [image]}
    # Nothing decides: the fallback experts look first and the one turn answers from their results.
    fake.script("A page about region-based segmentation.")
    answer = chat(proxy, [first_user])
    assert answer == "A page about region-based segmentation."
    first = metrics(proxy)["experts"]
    assert {name: (s["runs"], s["cached"]) for name, s in first.items()} == {"ocr": (1, 0), "detect": (1, 0)}
    sent = fake.calls("/api/chat")
    assert len(sent) == 1
    context = image_context(sent[-1])
    assert "Region-based segmentation" in context
    assert "text-like marks" in context
    assert "polygon" not in context  # letters are not shapes
    # The client's 36 tools went up unchanged; the image never did.
    names = [t["function"]["name"] for t in sent[0]["tools"] if not t["function"]["name"].startswith("vision_")]
    assert names == OWUI_TOOL_NAMES
    no_image_bytes(fake, image_b64=image)

    # Open WebUI's follow-up: the whole history again, the image still in the first message.
    fake.reset()
    fake.script("The second line is hard to read.")
    follow = [
        first_user,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And the line under the title?"},
    ]
    assert chat(proxy, follow) == "The second line is hard to read."
    after = metrics(proxy)["experts"]
    for name in ("ocr", "detect"):
        ran = after[name]["runs"] - first[name]["runs"]
        cached = after[name]["cached"] - first[name]["cached"]
        assert ran == cached >= 1, (name, after[name])  # every result of the follow-up came from the cache
    context = image_context(fake.calls("/api/chat")[-1])
    assert "Region-based segmentation" in context and "polygon" not in context
    no_image_bytes(fake, image_b64=image)


def test_reply_carrying_the_clients_tool_call_goes_back_unexecuted(stack):
    """Open WebUI runs its own tools: a call to one of them comes back to it, with no expert run for it."""
    fake, proxy = stack
    call = {"function": {"name": "search_web", "arguments": {"query": "region-based segmentation"}}}
    fake.script(Reply(tool_calls=[call]))
    body = {
        "model": MODEL,
        "stream": False,
        "tools": owui_tools(),
        "messages": [{"role": "user", "content": "Search the web for this title", "images": [page_b64()]}],
    }
    r = httpx.post(f"{proxy.url}/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    calls = r.json()["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["search_web"]
    assert calls[0]["function"]["arguments"] == {"query": "region-based segmentation"}

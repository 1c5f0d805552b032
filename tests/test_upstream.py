"""The gateway to Ollama (router.core.upstream) and typed messages at the run loop's edge."""

from __future__ import annotations

import asyncio
import time

import httpx
import ollama
import pytest

from router.core.config import BASE_MODEL, Settings
from router.core.errors import InvalidMessage, ModelNotFound, OllamaUnreachable, UpstreamError
from router.core.messages import split_images
from router.core.orchestrator import Orchestrator, TextDelta
from router.core.upstream import Upstream, error_reply, upstream_error
from tests.conftest import png_bytes
from tests.fake_ollama import Reply
from tests.router_experts import make_registry

IMG = png_bytes(80, 60)


# --- one mapping of Ollama's failures ------------------------------------------------------------
def test_a_missing_library_model_is_pulled_and_only_the_protocol_model_is_made_from_the_modelfile():
    host = "http://127.0.0.1:11434"
    gone = ollama.ResponseError("model 'llava:7b' not found", 404)
    assert str(upstream_error(gone, host, "llava:7b")).endswith("pull it with `ollama pull llava:7b`")
    assert "Modelfile" not in str(upstream_error(gone, host, "llava:7b"))
    mine = str(upstream_error(ollama.ResponseError("not found", 404), host, "qwen3-vision:latest"))
    assert mine.endswith("ollama create qwen3-vision:latest -f Modelfile`")
    shop = str(upstream_error(gone, host, "shop-vision", protocol_model="shop-vision"))
    assert "ollama create shop-vision -f Modelfile" in shop


def test_every_failure_maps_to_one_line_and_a_status():
    host = "http://127.0.0.1:11434"
    missing = upstream_error(ollama.ResponseError("model 'x' not found", 404), host, "x", protocol_model="x")
    assert isinstance(missing, ModelNotFound) and missing.status == 404 and missing.detail == "model 'x' not found"
    assert str(missing) == (
        f"model 'x' not found at {host}: create it with `ollama pull {BASE_MODEL} && ollama create x -f Modelfile`"
    )
    assert "run `ollama pull e`" in str(
        upstream_error(ollama.ResponseError("nope", 404), host, "e", missing="run `ollama pull e`")
    )
    assert error_reply(ollama.ResponseError("out of memory", 500), host) == (500, f"Ollama at {host}: out of memory")
    assert error_reply(ollama.ResponseError("broke mid-stream"), host)[0] == 502  # no status of its own
    down = upstream_error(ConnectionError("refused"), host)
    assert isinstance(down, OllamaUnreachable) and down.status == 502 and "ollama serve" in str(down)
    assert error_reply(httpx.ReadTimeout("slow"), host) == (504, f"Ollama at {host} timed out")
    assert error_reply(httpx.RemoteProtocolError("cut"), host) == (502, f"Ollama at {host}: RemoteProtocolError: cut")


# --- the one /api/show cache ---------------------------------------------------------------------
def test_show_is_asked_once_per_model_even_concurrently(fake_ollama):
    up = Upstream(fake_ollama.url)

    async def main():
        shown = await asyncio.gather(*(up.show("qwen3-vision") for _ in range(8)))
        again = await up.show("qwen3-vision")
        return shown, again

    shown, again = asyncio.run(main())
    assert all(s.capabilities == ["completion", "tools"] for s in shown) and again is shown[0]
    assert len(fake_ollama.calls("/api/show")) == 1


def test_a_missing_model_is_remembered_for_the_ttl(fake_ollama):
    up = Upstream(fake_ollama.url, show_ttl_s=0.3)

    async def ask():
        with pytest.raises(ModelNotFound, match="model 'absent' not found"):
            await up.show("absent")

    asyncio.run(ask())
    asyncio.run(ask())
    assert len(fake_ollama.calls("/api/show")) == 1
    time.sleep(0.35)
    asyncio.run(ask())
    assert len(fake_ollama.calls("/api/show")) == 2


def test_a_mid_stream_error_is_an_upstream_error(fake_ollama):
    fake_ollama.script(Reply("a b c d e f", chunk_size=2, error_after=2, error="model runner crashed"))
    up = Upstream(fake_ollama.url)

    async def main():
        return [c.message.content async for c in up.chat("qwen3-vision", [ollama.Message(role="user", content="x")])]

    with pytest.raises(UpstreamError, match="model runner crashed") as exc:
        asyncio.run(main())
    assert exc.value.status == 502 and exc.value.detail == "model runner crashed"


def test_version_and_unreachable():
    async def main(host):
        return await Upstream(host, timeout=2).version()

    with pytest.raises(OllamaUnreachable, match="cannot reach Ollama at http://127.0.0.1:9"):
        asyncio.run(main("127.0.0.1:9"))


def test_version_of_the_fake(fake_ollama):
    assert asyncio.run(Upstream(fake_ollama.url).version()) == "0.13.5"


# --- typed messages at the edge ------------------------------------------------------------------
def test_split_images_keeps_image_values_untouched(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(IMG)
    msg, images = split_images({"role": "user", "content": "hi", "images": [str(p)], "extra": 1}, 1)
    assert images == [str(p)]  # handed on as data; ollama.Image would have read the file
    assert msg == ollama.Message(role="user", content="hi") and msg.images is None


def test_a_malformed_message_is_one_clear_error_and_nothing_is_sent(fake_ollama):
    o = Orchestrator(Settings(ollama_host=fake_ollama.url, cache_dir=""), registry=make_registry())
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]
    with pytest.raises(InvalidMessage, match=r"^message 2: tool_calls\.0\.function\.arguments: Field required"):
        o.chat(bad)
    with pytest.raises(InvalidMessage, match="message 1: expected an object"):
        o.chat(["hello"])
    assert InvalidMessage.status == 400 and fake_ollama.calls("/api/chat") == []


def test_typed_messages_are_accepted(fake_ollama):
    fake_ollama.script("It says GRAND OPENING.")
    o = Orchestrator(Settings(ollama_host=fake_ollama.url, cache_dir=""), registry=make_registry())
    final = o.chat([ollama.Message(role="user", content="What is written here?", images=[ollama.Image(value=IMG)])])
    assert final.answer == "It says GRAND OPENING." and final.trace.images[0]["width"] == 80
    assert all("images" not in m for m in fake_ollama.calls("/api/chat")[0]["messages"])


# --- the event queue -----------------------------------------------------------------------------
def test_leaving_mid_answer_cancels_the_upstream_stream(fake_ollama):
    fake_ollama.script(Reply(chunks=["one ", "two ", "three ", "four "], chunk_delay_s=0.3))
    o = Orchestrator(Settings(ollama_host=fake_ollama.url, cache_dir=""), registry=make_registry())

    async def main():
        agen = o.stream([{"role": "user", "content": "count"}])
        first = await agen.__anext__()
        await agen.aclose()  # the client left
        await asyncio.sleep(0.5)
        return first

    assert asyncio.run(main()) == TextDelta("one")  # the trailing space waits for what follows it
    deadline = time.monotonic() + 5
    while fake_ollama.streams_cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_ollama.streams_cancelled == 1 and fake_ollama.streams_completed == 0

# ruff: noqa: F811  (pytest fixtures imported from tests.test_proxy_support)
"""Real clients, unchanged, pointed at the proxy: ollama-python (sync and async), LangChain's
ChatOllama and the official openai client. Each gets an answer built from what the experts found,
exactly one terminal chunk, and the upstream never sees the image."""

from __future__ import annotations

import asyncio
import json

import httpx
import ollama
import pytest

from tests.fake_ollama import Reply
from tests.test_proxy_support import (
    IMAGE,
    IMAGE_B64,
    MODEL,
    OCR_TEXT,
    fresh,  # noqa: F401  (fixture)
    no_image_bytes,
    sse_events,
    stack,  # noqa: F401  (fixture)
)

QUESTION = "What is written here?"


def answer_reply() -> Reply:
    return Reply(f"The image says {OCR_TEXT}.", chunk_size=4)


def upstream_read_the_experts(fake) -> None:
    sent = fake.calls("/api/chat")
    assert sent, "the model was never asked"
    assert OCR_TEXT in json.dumps(sent[-1]["messages"])
    no_image_bytes(fake)


# --- ollama-python ---------------------------------------------------------------------------------
def test_ollama_python_sync_chat_stream_and_not(fresh):
    c = ollama.Client(host=fresh.url)
    fresh.fake.script(answer_reply(), answer_reply())
    parts = list(c.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION, "images": [IMAGE]}], stream=True))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == f"The image says {OCR_TEXT}."
    assert parts[-1].eval_count and parts[-1].done_reason == "stop"
    whole = c.chat(
        model=MODEL, messages=[{"role": "user", "content": QUESTION, "images": [IMAGE]}], options={"temperature": 0}
    )
    assert whole.done and whole.message.content == f"The image says {OCR_TEXT}."
    upstream_read_the_experts(fresh.fake)


def test_ollama_python_sync_generate_stream_and_not(fresh):
    c = ollama.Client(host=fresh.url)
    fresh.fake.script(answer_reply(), answer_reply())
    parts = list(c.generate(model=MODEL, prompt=QUESTION, images=[IMAGE], stream=True))
    assert [p.done for p in parts].count(True) == 1
    assert "".join(p.response for p in parts) == f"The image says {OCR_TEXT}."
    whole = c.generate(model=MODEL, prompt=QUESTION, images=[IMAGE])
    assert whole.done and OCR_TEXT in whole.response
    upstream_read_the_experts(fresh.fake)


def test_ollama_python_show_list_pull_pass_through(fresh):
    c = ollama.Client(host=fresh.url)
    assert "vision" in (c.show(MODEL).capabilities or [])
    names = {m.model: m for m in c.list().models}
    assert f"{MODEL}:latest" in names and names["llava:7b"].details.family == "llama"
    progress = [p.status for p in c.pull("tinyllama", stream=True)]
    assert progress[-1] == "success"
    assert c.pull("tinyllama").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        c.show("does-not-exist")
    assert err.value.status_code == 404
    assert c.embed(model="nomic-embed-text", input="hello").embeddings


def test_ollama_python_async(fresh):
    async def main():
        c = ollama.AsyncClient(host=fresh.url)
        fresh.fake.script(answer_reply(), answer_reply(), answer_reply())
        parts = [
            p
            async for p in await c.chat(
                model=MODEL, messages=[{"role": "user", "content": QUESTION, "images": [IMAGE_B64]}], stream=True
            )
        ]
        whole = await c.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION, "images": [IMAGE]}])
        gen = [p async for p in await c.generate(model=MODEL, prompt=QUESTION, images=[IMAGE], stream=True)]
        shown = await c.show(MODEL)
        return parts, whole, gen, shown

    parts, whole, gen, shown = asyncio.run(main())
    assert [p.done for p in parts].count(True) == 1
    assert "".join(p.message.content or "" for p in parts) == f"The image says {OCR_TEXT}."
    assert whole.message.content == f"The image says {OCR_TEXT}."
    assert [p.done for p in gen].count(True) == 1 and OCR_TEXT in "".join(p.response for p in gen)
    assert "vision" in shown.capabilities
    upstream_read_the_experts(fresh.fake)


# --- LangChain ---------------------------------------------------------------------------------------
def test_langchain_chat_ollama_with_image_block(fresh):
    from langchain_core.messages import HumanMessage
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=fresh.url, temperature=0)
    msg = HumanMessage(
        content=[
            {"type": "text", "text": QUESTION},
            {"type": "image_url", "image_url": f"data:image/png;base64,{IMAGE_B64}"},
        ]
    )
    fresh.fake.script(answer_reply(), answer_reply())
    out = llm.invoke([msg])
    assert out.content == f"The image says {OCR_TEXT}."
    chunks = list(llm.stream([msg]))
    assert "".join(str(c.content) for c in chunks) == f"The image says {OCR_TEXT}."
    finals = [c for c in chunks if (c.response_metadata or {}).get("done")]
    assert len(finals) == 1 and finals[0].response_metadata.get("done_reason") == "stop"
    upstream_read_the_experts(fresh.fake)


# --- OpenAI -----------------------------------------------------------------------------------------
def openai_messages() -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}"}},
            ],
        }
    ]


def test_openai_client_streaming_with_data_url(fresh):
    from openai import OpenAI

    client = OpenAI(base_url=fresh.url + "/v1", api_key="ollama")
    fresh.fake.script(answer_reply())
    stream = client.chat.completions.create(
        model=MODEL, messages=openai_messages(), stream=True, stream_options={"include_usage": True}, temperature=0
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"The image says {OCR_TEXT}."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1
    sent = fresh.fake.calls("/api/chat")[-1]
    assert sent["options"] == {"temperature": 0}
    upstream_read_the_experts(fresh.fake)
    assert fresh.fake.calls("/v1/chat/completions") == []


def test_openai_client_non_streaming(fresh):
    from openai import OpenAI

    client = OpenAI(base_url=fresh.url + "/v1", api_key="ollama")
    fresh.fake.script(answer_reply())
    out = client.chat.completions.create(model=MODEL, messages=openai_messages(), max_tokens=64)
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == f"The image says {OCR_TEXT}."
    assert out.choices[0].finish_reason == "stop" and out.usage.total_tokens > 0
    assert fresh.fake.calls("/api/chat")[-1]["options"] == {"num_predict": 64}
    upstream_read_the_experts(fresh.fake)


def test_openai_raw_stream_ends_with_one_done(fresh):
    fresh.fake.script(answer_reply())
    body = {"model": MODEL, "messages": openai_messages(), "stream": True}
    raw = httpx.post(fresh.url + "/v1/chat/completions", json=body, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.content)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    objs = [json.loads(e) for e in events[:-1]]
    assert [o["choices"][0]["finish_reason"] for o in objs].count("stop") == 1
    assert all(o["object"] == "chat.completion.chunk" for o in objs)


def test_openai_text_only_passes_through_to_ollama(fresh):
    from openai import OpenAI

    client = OpenAI(base_url=fresh.url + "/v1", api_key="ollama")
    fresh.fake.script("Paris.")
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Capital of France?"}])
    assert out.choices[0].message.content == "Paris."
    assert fresh.fake.calls("/v1/chat/completions")[-1]["messages"][0]["content"] == "Capital of France?"
    assert [m.id for m in client.models.list().data][0] == f"{MODEL}:latest"


def test_openai_errors_have_openai_shape(fresh):
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=fresh.url + "/v1", api_key="ollama", max_retries=0)
    remote = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            ],
        }
    ]
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=remote)
    assert "data URLs" in err.value.body["message"] and err.value.body["type"] == "invalid_request_error"
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}]
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=bad)
    assert "illegal base64" in err.value.body["message"]
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="ghost", messages=openai_messages())
    no_image_bytes(fresh.fake)

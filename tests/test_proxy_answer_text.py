# ruff: noqa: F811  (pytest fixtures imported from tests.test_proxy_support)
"""Through the proxy, on every route, streamed and not: the model's echoed scaffolding never reaches the
client, the answer still streams in several pieces, and the findings line is added only when configured."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from router.serve.proxy import ProxyConfig
from tests.fake_ollama import Reply
from tests.test_proxy_support import (
    IMAGE_B64,
    MODEL,
    OCR_TEXT,
    Stack,
    ndjson,
    no_image_bytes,
    sse_events,
    start_stack,
    stop_stack,
)

QUESTION = "What is written on this image?"  # keywords pick ocr: one LLM turn
ANSWER = f"The image says {OCR_TEXT}."
# What SmolLM2-135M-Instruct wrote behind the router (issue 17), after an answer.
ECHO = (
    "\nUser: [image 1 attached: 64x48 PNG; ask a vision expert with a tag to look at it]\n\n"
    "The text is written in the language of the image.\n\nThe image is written in the language of the image.\n\n"
    "The image is written in the language of the image."
)
SCAFFOLDING = ("User:", "attached", "IMAGE CONTEXT", "VISION", "language of the image")
FINDINGS = "looked at: ocr 1 line"


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "findings"])
def stack(request) -> Iterator[Stack]:
    s = start_stack(config=ProxyConfig(findings=request.param))
    yield s
    stop_stack(s)


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    stack.fake.reset()
    stack.fake.responder = lambda path, body: Reply(ANSWER + ECHO, chunk_size=3)
    return stack


def expected(stack: Stack) -> str:
    return f"{ANSWER}\n\n{FINDINGS}" if stack.proxy.app.state.proxy.cfg.findings else ANSWER


def native_body(stream: bool, chat: bool = True) -> dict:
    if chat:
        return {
            "model": MODEL,
            "stream": stream,
            "messages": [{"role": "user", "content": QUESTION, "images": [IMAGE_B64]}],
        }
    return {"model": MODEL, "stream": stream, "prompt": QUESTION, "images": [IMAGE_B64]}


def openai_body(stream: bool) -> dict:
    parts = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}"}},
    ]
    return {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": parts}]}


def clean(text: str) -> None:
    for s in SCAFFOLDING:
        assert s not in text, text


def one_turn(fresh: Stack) -> None:
    assert len(fresh.fake.calls("/api/chat")) == 1
    no_image_bytes(fresh.fake)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "generate"])
def test_native_stream(fresh, chat):
    r = httpx.post(fresh.url + ("/api/chat" if chat else "/api/generate"), json=native_body(True, chat), timeout=30)
    objs = ndjson(r.content)
    pieces = [(o["message"]["content"] if chat else o["response"]) for o in objs if not o["done"]]
    text = "".join(pieces)
    clean(text)
    assert text == expected(fresh)
    assert len([p for p in pieces if p]) >= 3  # still streamed, not held to the end
    assert objs[-1]["done"] is True and [o["done"] for o in objs].count(True) == 1
    one_turn(fresh)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "generate"])
def test_native_not_streamed(fresh, chat):
    r = httpx.post(fresh.url + ("/api/chat" if chat else "/api/generate"), json=native_body(False, chat), timeout=30)
    doc = r.json()
    text = doc["message"]["content"] if chat else doc["response"]
    clean(text)
    assert text == expected(fresh) and doc["done"] is True
    one_turn(fresh)


def test_openai_stream(fresh):
    r = httpx.post(fresh.url + "/v1/chat/completions", json=openai_body(True), timeout=30)
    events = sse_events(r.content)
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    text = "".join(deltas)
    clean(text)
    assert text == expected(fresh)
    assert len([d for d in deltas if d]) >= 3
    one_turn(fresh)


def test_openai_not_streamed(fresh):
    r = httpx.post(fresh.url + "/v1/chat/completions", json=openai_body(False), timeout=30)
    text = r.json()["choices"][0]["message"]["content"]
    clean(text)
    assert text == expected(fresh)
    one_turn(fresh)


def test_a_reply_of_scaffolding_only_gets_the_no_answer_text(fresh):
    fresh.fake.responder = lambda path, body: Reply(ECHO.lstrip(), chunk_size=3)
    doc = httpx.post(fresh.url + "/api/chat", json=native_body(False), timeout=30).json()
    text = doc["message"]["content"]
    clean(text)
    assert text.startswith("The model gave no answer") and OCR_TEXT in text
    assert FINDINGS not in text  # the no-answer text lists the findings already

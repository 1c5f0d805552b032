# ruff: noqa: F811  (pytest fixtures imported from tests.test_proxy_support)
"""Faults: upstream down, 500, a stream cut or failing mid-way, a slow upstream, experts that raise or
hang, malformed bodies, oversized bodies, and clients that hang up."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from router.serve.proxy import ProxyConfig
from tests.fake_ollama import Reply
from tests.test_proxy_support import (
    IMAGE_B64,
    MODEL,
    fresh,  # noqa: F401  (fixture)
    ndjson,
    no_image_bytes,
    settings,
    stack,  # noqa: F401  (fixture)
    start_stack,
    stop_stack,
)


def chat_body(text: str = "What is written here?", images: bool = True, **extra) -> dict:
    msg = {"role": "user", "content": text}
    if images:
        msg["images"] = [IMAGE_B64]
    return {"model": MODEL, "messages": [msg], **extra}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_upstream_down_is_a_clear_502():
    from router.serve.proxy import ProxyServer, create_app
    from tests.test_proxy_support import registry, settings

    app = create_app(settings(), registry(), f"http://127.0.0.1:{_closed_port()}")
    with ProxyServer(app) as proxy:
        for method, path, body in [
            ("HEAD", "/", None),
            ("GET", "/api/tags", None),
            ("POST", "/api/show", {"model": MODEL}),
            ("POST", "/api/chat", chat_body(images=False)),
            ("POST", "/api/chat", chat_body()),
            ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ]:
            r = httpx.request(method, proxy.url + path, json=body, timeout=10)
            assert r.status_code == 502, (path, r.text)
            if method != "HEAD":
                assert "cannot reach Ollama" in r.json()["error"]
        health = httpx.get(proxy.url + "/_vision/health").json()
        assert health["status"] == "degraded" and health["upstream"]["ok"] is False


def test_upstream_500(fresh):
    fresh.fake.script(Reply(status=500, error="llama runner process has terminated"))
    r = httpx.post(fresh.url + "/api/chat", json=chat_body(), timeout=30)
    assert r.status_code == 500 and "llama runner process has terminated" in r.json()["error"]
    fresh.fake.script(Reply(status=500, error="llama runner process has terminated"))
    r = httpx.post(fresh.url + "/api/chat", json=chat_body(images=False), timeout=30)
    assert r.status_code == 500 and r.json() == {"error": "llama runner process has terminated"}


@pytest.mark.parametrize("images", [True, False], ids=["routed", "passthrough"])
def test_stream_cut_midway_ends_with_an_error_line(fresh, images):
    fresh.fake.script(Reply("one two three four five six", chunk_size=3, cut_after=3))
    r = httpx.post(fresh.url + "/api/chat", json=chat_body(images=images), timeout=30)
    assert r.status_code == 200
    lines = ndjson(r.content)
    assert "error" in lines[-1] and not any(x.get("done") for x in lines)
    assert "".join(x.get("message", {}).get("content", "") for x in lines[:-1]) == "one two t"


@pytest.mark.parametrize("images", [True, False], ids=["routed", "passthrough"])
def test_upstream_error_line_midway(fresh, images):
    fresh.fake.script(Reply("abcdefghijkl", chunk_size=3, error_after=2, error="out of memory"))
    lines = ndjson(httpx.post(fresh.url + "/api/chat", json=chat_body(images=images), timeout=30).content)
    assert "out of memory" in lines[-1]["error"]
    assert not any(x.get("done") for x in lines)


def test_slow_upstream_times_out():
    s = start_stack(config=ProxyConfig(upstream_timeout_s=0.5))
    try:
        for images in (True, False):
            s.fake.script(Reply("late", delay_s=2.0))
            t0 = time.monotonic()
            r = httpx.post(s.url + "/api/chat", json=chat_body(images=images), timeout=30)
            assert r.status_code == 504, r.text
            assert "timed out" in r.json()["error"]
            assert time.monotonic() - t0 < 1.9
        # Silence mid-stream: the answer so far, then an error line.
        s.fake.script(Reply("abcdefgh", chunk_size=2, chunk_delay_s=1.5))
        lines = ndjson(httpx.post(s.url + "/api/chat", json=chat_body(), timeout=30).content)
        assert "timed out" in lines[-1]["error"] and lines[0]["message"]["content"] == "ab"
    finally:
        stop_stack(s)


def test_expert_raising_or_hanging_still_answers():
    fresh = start_stack(settings(semantic=False, fallback=[]))  # the model asks for the failing experts
    try:
        fresh.fake.script("[VISION: boom]\n[VISION: hang]", "Sorry, the experts failed.")
        t0 = time.monotonic()
        r = httpx.post(fresh.url + "/api/chat", json=chat_body("Look closely please", stream=False), timeout=30)
        assert r.status_code == 200
        assert r.json()["message"]["content"] == "Sorry, the experts failed."
        assert time.monotonic() - t0 < 5  # the hanging expert's 0.5 s timeout, not its 30 s sleep
        context = fresh.fake.calls("/api/chat")[-1]["messages"][-1]["content"]
        assert "kaboom" in context and "timed out" in context
        m = httpx.get(fresh.url + "/_vision/metrics").json()
        assert m["experts"]["boom"]["errors"] >= 1 and m["experts"]["hang"]["errors"] >= 1
    finally:
        stop_stack(fresh)


def test_malformed_json_body(fresh):
    r = httpx.post(fresh.url + "/api/chat", content=b'{"model": "x", "messages": [{"images": [', timeout=10)
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
    r = httpx.post(fresh.url + "/api/chat", content=b'{"model": ', timeout=10)  # forwarded: Ollama's own 400
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(fresh.url + "/v1/chat/completions", content=b'{"image_url": [', timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(fresh.url + "/api/chat", json={"messages": [{"role": "user", "images": [IMAGE_B64]}]})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    no_image_bytes(fresh.fake)


def test_oversized_body_is_413():
    s = start_stack(config=ProxyConfig(max_body_bytes=1024 * 1024))
    try:
        big = json.dumps(chat_body()).replace(IMAGE_B64, "A" * (2 * 1024 * 1024)).encode()
        r = httpx.post(s.url + "/api/chat", content=big, timeout=30)
        assert r.status_code == 413 and "1 MiB limit" in r.json()["error"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(3):
                yield b" " * (512 * 1024)

        r = httpx.post(s.url + "/api/pull", content=chunks(), timeout=30)
        assert r.status_code == 413 and "error" in r.json()
        assert s.fake.calls("/api/chat") == [] and s.fake.calls("/api/pull") == []
    finally:
        stop_stack(s)


def _wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("images", [True, False], ids=["routed", "passthrough"])
def test_client_disconnect_cancels_upstream(fresh, images):
    fresh.fake.script(Reply("x" * 40, chunk_size=1, chunk_delay_s=0.1))
    before, completed = fresh.fake.streams_cancelled, fresh.fake.streams_completed
    with httpx.Client(timeout=30) as c, c.stream("POST", fresh.url + "/api/chat", json=chat_body(images=images)) as r:
        for line in r.iter_lines():
            if line:
                break  # one chunk, then hang up
    assert _wait_for(lambda: fresh.fake.streams_cancelled > before), "upstream stream kept running"
    assert fresh.fake.streams_completed == completed


def test_client_leaving_before_first_token_cancels_the_run(fresh):
    fresh.fake.script(Reply("too late", delay_s=0.3, chunk_delay_s=0.2, chunk_size=1))
    before = fresh.app_proxy.metrics.client_disconnects
    cancelled, completed = fresh.fake.streams_cancelled, fresh.fake.streams_completed
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fresh.url + "/api/chat", json=chat_body(stream=False), timeout=0.2)
    assert _wait_for(lambda: fresh.app_proxy.metrics.client_disconnects > before)
    assert _wait_for(lambda: fresh.fake.streams_cancelled > cancelled)
    assert fresh.fake.streams_completed == completed

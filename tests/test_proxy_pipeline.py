# ruff: noqa: F811  (pytest fixtures imported from tests.test_proxy_support)
"""The one request pipeline (issue 12): images travel decoded inside their own messages on every route,
and the proxy and the run loop share one ``/api/show`` cache."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import pytest

from experts.images import DecodedImage
from router.core.orchestrator import Final
from router.core.trace import Trace
from router.serve.proxy import ProxyServer, create_app
from tests.fake_ollama import Reply
from tests.test_proxy_support import (
    MODEL,
    b64,
    fresh,  # noqa: F401  (fixture)
    models,
    no_image_bytes,
    png,
    registry,
    settings,
    stack,  # noqa: F401  (fixture)
    start_stack,
    stop_stack,
)


class RecordingOrchestrator:
    """Stands in for the orchestrator: records what the pipeline hands it and answers at once."""

    def __init__(self, fake_url: str) -> None:
        from router.core.orchestrator import Orchestrator

        self.real = Orchestrator(settings(ollama_host=fake_url), registry=registry())
        self.registry = self.real.registry
        self.dispatcher = self.real.dispatcher
        self.upstream = self.real.upstream
        self.calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    async def show(self, model: str) -> Any:
        return await self.real.show(model)

    def preload(self) -> None:
        self.real.preload()

    async def stream(self, messages: list[dict[str, Any]], **kw: Any):
        self.calls.append((messages, kw))
        yield Final(answer="ok", model=kw["model"], done_reason="stop", stats={}, trace=Trace(model=kw["model"]))


def _id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("route", ["chat", "openai"])
def test_images_stay_in_their_messages_decoded(route):
    a, b, c = png((1, 2, 3)), png((4, 5, 6)), png((7, 8, 9))
    if route == "chat":
        path = "/api/chat"
        body = {
            "model": MODEL,
            "stream": False,
            "messages": [
                {"role": "user", "content": "first", "images": [b64(a), b64(b)]},
                {"role": "assistant", "content": "seen"},
                {"role": "user", "content": "second", "images": [b64(c)]},
            ],
        }
    else:
        path = "/v1/chat/completions"

        def part(raw: bytes) -> dict:
            return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(raw)}}

        body = {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "first"}, part(a), part(b)]},
                {"role": "assistant", "content": "seen"},
                {"role": "user", "content": [part(c), {"type": "text", "text": "second"}]},
            ],
        }
    from tests.fake_ollama import FakeOllama

    with FakeOllama(models()) as fake:
        orch = RecordingOrchestrator(fake.url)
        with ProxyServer(create_app(settings(), registry(), fake.url, orchestrator=orch)) as proxy:
            r = httpx.post(proxy.url + path, json=body, timeout=30)
            assert r.status_code == 200, r.text
    ((messages, kw),) = orch.calls
    assert "decoded" not in kw  # nothing to match back by position
    assert [m["content"] for m in messages] == ["first", "seen", "second"]
    first, middle, last = (m.get("images", []) for m in messages)
    assert all(isinstance(i, DecodedImage) for i in first + last) and middle == []
    assert [i.image_id for i in first] == [_id(a), _id(b)] and [i.image_id for i in last] == [_id(c)]


def test_generate_image_travels_with_the_prompt():
    a = png((11, 12, 13))
    from tests.fake_ollama import FakeOllama

    with FakeOllama(models()) as fake:
        orch = RecordingOrchestrator(fake.url)
        with ProxyServer(create_app(settings(), registry(), fake.url, orchestrator=orch)) as proxy:
            body = {"model": MODEL, "stream": False, "system": "Be brief.", "prompt": "read", "images": [b64(a)]}
            assert httpx.post(proxy.url + "/api/generate", json=body, timeout=30).json()["response"] == "ok"
    ((messages, _),) = orch.calls
    assert [m["role"] for m in messages] == ["system", "user"] and "images" not in messages[0]
    assert [i.image_id for i in messages[1]["images"]] == [_id(a)]


def test_one_show_per_model_for_proxy_and_run_loop():
    """Routing (proxy) and the protocol check (run loop) read one cache: one /api/show upstream,
    however many requests arrive at once."""
    s = start_stack(settings(inject_protocol="auto"))
    try:
        s.fake.responder = lambda path, body: Reply("It says SALE.")

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as c:
                rs = await asyncio.gather(
                    *(
                        c.post(
                            s.url + "/api/chat",
                            json={
                                "model": MODEL,
                                "stream": False,
                                "messages": [
                                    {
                                        "role": "user",
                                        "content": "What is written here?",
                                        "images": [b64(png((i, 40, 90)))],
                                    }
                                ],
                            },
                        )
                        for i in range(8)
                    )
                )
            return [r.status_code for r in rs]

        assert asyncio.run(burst()) == [200] * 8
        shows = [b for b in s.fake.calls("/api/show") if (b or {}).get("model") == MODEL]
        assert len(shows) == 1, shows
        no_image_bytes(s.fake)
    finally:
        stop_stack(s)


def test_unknown_model_keeps_ollamas_own_words_on_every_route(fresh):
    img = b64(png())
    r = httpx.post(fresh.url + "/api/generate", json={"model": "ghost", "prompt": "x", "images": [img]})
    assert r.status_code == 404 and r.json() == {"error": "model 'ghost' not found"}
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + img}}
    r = httpx.post(
        fresh.url + "/v1/chat/completions", json={"model": "ghost", "messages": [{"role": "user", "content": [part]}]}
    )
    assert r.status_code == 404 and r.json()["error"]["message"] == "model 'ghost' not found"
    assert r.json()["error"]["type"] == "not_found_error"

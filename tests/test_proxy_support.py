"""Shared pieces of the proxy tests: deterministic test experts, images, and a fake Ollama with the
proxy in front of it, both on real sockets on 127.0.0.1 (no tests in this module)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from experts.base import Expert, ExpertArgs
from experts.registry import Registry
from router.core.config import Settings
from router.serve.proxy import ProxyConfig, ProxyServer, create_app
from tests.fake_ollama import FakeModel, FakeOllama

OCR_TEXT = "SALE 50% OFF"
MODEL = "qwen3-vision"


class OcrArgs(ExpertArgs):
    query: str | None = None


class TextExpert(Expert):
    """A deterministic ``ocr``: always reads OCR_TEXT; counts its runs."""

    name = "ocr"
    aliases = ("text",)
    description = "Read the text in the image."
    Args = OcrArgs
    positional = "query"
    runs = 0
    seen: list = []  # the images it was given (tests check the proxy frees them)

    def _analyze(self, image, args):
        type(self).runs += 1
        type(self).seen.append(image)
        return self.new_result(image, full_text=OCR_TEXT)


class BoomExpert(Expert):
    """Always raises."""

    name = "boom"
    description = "An expert with a bug."

    def _analyze(self, image, args):
        raise RuntimeError("kaboom")


class HangExpert(Expert):
    """Hangs far longer than its timeout."""

    name = "hang"
    description = "An expert that never answers."

    def _analyze(self, image, args):
        time.sleep(30)
        raise AssertionError("unreachable")


def registry() -> Registry:
    reg = Registry()
    for cls in (TextExpert, BoomExpert, HangExpert):
        reg.register(cls)
    return reg


def png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


IMAGE = png()
IMAGE_B64 = b64(IMAGE)


def models() -> list[FakeModel]:
    return [
        FakeModel(MODEL),  # text-only, tools: the routed model
        FakeModel("qwen3:4b-instruct-2507-q4_K_M"),
        FakeModel(
            "llava:7b",
            capabilities=["completion", "vision"],
            family="llama",
            projector_info={"clip.has_vision_encoder": True},
        ),
        FakeModel("nomic-embed-text", capabilities=["embedding"], family="nomic-bert"),
    ]


def settings(**over: Any) -> Settings:
    base = {"cache_dir": "", "fallback": ["ocr"], "expert_timeout": 5.0, "experts": {"hang": {"timeout": 0.5}}}
    base.update(over)
    return Settings(**base)


@dataclass
class Stack:
    fake: FakeOllama
    proxy: ProxyServer

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def app_proxy(self):
        return self.proxy.app.state.proxy


def start_stack(
    settings_: Settings | None = None, config: ProxyConfig | None = None, fake: FakeOllama | None = None
) -> Stack:
    fake = fake or FakeOllama(models()).start()
    app = create_app(settings_ or settings(), registry(), fake.url, config=config)
    return Stack(fake, ProxyServer(app).start())


def stop_stack(stack: Stack) -> None:
    stack.proxy.stop()
    stack.fake.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = start_stack()
    yield s
    stop_stack(s)


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The module's stack with the fake's script and request log cleared."""
    stack.fake.reset()
    TextExpert.runs = 0
    return stack


def no_image_bytes(fake: FakeOllama, *, image_b64: str = IMAGE_B64) -> None:
    """Assert that no request the upstream saw carried an image."""
    with fake._lock:
        bodies = [b for _, _, b in fake.requests if b is not None]
    for body in bodies:
        text = json.dumps(body)
        assert image_b64[:40] not in text, "image bytes reached the upstream"
        for m in body.get("messages", []) if isinstance(body.get("messages"), list) else []:
            assert not m.get("images"), m
            content = m.get("content")
            if isinstance(content, list):  # OpenAI content parts
                assert not any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)
        assert not body.get("images"), body


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def sse_events(raw: bytes) -> list[str]:
    return [line[len(b"data: ") :].decode() for line in raw.split(b"\n") if line.startswith(b"data: ")]


def capture_serve(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`vision-router serve` up to the point it would serve: what it hands uvicorn (``app``, ``config``) and the
    socket it bound (``host``, ``port``; closed at once). Filled on each run of the command."""
    import uvicorn

    seen: dict[str, Any] = {}

    def run(self: Any, sockets: Any = None) -> None:
        (sock,) = sockets
        host, port = sock.getsockname()[:2]
        seen.update(app=self.config.app, config=self.config, host=host, port=port)
        sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


def free_port() -> int:
    """A port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

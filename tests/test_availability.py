"""Issue 17: only experts that can run here are offered, the same set in every door; one that cannot run is
skipped at once wherever it is asked for, with one line for the model, and nothing reaches for the network at
request time. Also: the operator's progress line for streaming clients. Scripted fake Ollama (the real-model
tier is tests/test_real_model_loop.py)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

import router.commands.common as common_mod
from experts.base import Expert
from experts.errors import EngineMissing
from experts.registry import Registry
from router.commands import cli
from router.core import protocol
from router.core.config import Settings
from router.core.orchestrator import Orchestrator
from router.core.protocols import TAGS, taught
from router.serve.proxy import ProxyConfig
from tests.conftest import png_bytes
from tests.router_experts import FakeDetect, FakeOcr, QueryArgs
from tests.test_proxy_support import IMAGE_B64, MODEL, ndjson, start_stack, stop_stack

IMG = png_bytes(80, 60, (250, 250, 250))


class NoWeights(Expert):
    """Installed, but its weights are not here: status says so; loading would go to the network."""

    name = "caption"
    aliases = ("describe",)
    description = "Describe the image."
    Args = QueryArgs
    positional = "query"
    status_calls = 0
    loads = 0

    def status(self):
        type(self).status_calls += 1
        return {"ok": False, "engine": "test", "weights": "not downloaded; fetch once: get-weights caption"}

    def _load(self):
        type(self).loads += 1
        time.sleep(30)  # what 213 s of hub retries looks like, shortened

    def _analyze(self, image, args):
        raise AssertionError("never runs")


class LoadFails(Expert):
    """Its status is fine, but the engine turns out missing when it loads."""

    name = "clip"
    description = "Visual style."
    loads = 0

    def _load(self):
        type(self).loads += 1
        raise EngineMissing("clip: weights for ViT-B-32 are not available locally")

    def _analyze(self, image, args):
        raise AssertionError("never runs")


def registry(*extra: type[Expert]) -> Registry:
    NoWeights.status_calls = NoWeights.loads = LoadFails.loads = 0
    reg = Registry()
    for cls in (FakeOcr, FakeDetect, NoWeights, *extra):
        reg.register(cls)
    return reg


def orch(fake, reg: Registry | None = None, **settings) -> Orchestrator:
    settings.setdefault("cache_dir", "")
    return Orchestrator(Settings(ollama_host=fake.url, **settings), registry=reg or registry())


# --- the registry's availability --------------------------------------------------------------------
def test_availability_is_checked_once_and_refreshed_on_demand():
    reg = registry()
    assert reg.runnable() == ["detect", "ocr"]
    assert reg.availability()["caption"] == "weights: not downloaded; fetch once: get-weights caption"
    for _ in range(5):
        assert not reg.can_run("describe")  # aliases too
    assert NoWeights.status_calls == 1  # remembered, never rediscovered per request
    reg.refresh_availability()
    assert NoWeights.status_calls == 2
    reg.configure("caption", model="elsewhere")  # another configuration is another check
    reg.can_run("caption")
    assert NoWeights.status_calls == 3
    assert reg.unavailable("telepathy") == "unknown expert 'telepathy' (available: detect, ocr)"


def test_a_failed_load_is_remembered_until_a_refresh(fake_ollama):
    reg = registry(LoadFails)
    fake_ollama.responder = lambda path, body: "It has a style."
    o = orch(fake_ollama, reg, fallback=[])
    for _ in range(3):
        o.ask("what style is this?", [IMG], experts=["clip"])
    assert LoadFails.loads == 1  # the second and third requests skip it at once
    ctx = fake_ollama.calls("/api/chat")[-1]["messages"][-1]["content"]
    assert "Note: clip was not run, it cannot run here: weights for ViT-B-32 are not available locally" in ctx
    reg.refresh_availability()
    o.ask("what style is this?", [IMG], experts=["clip"])
    assert LoadFails.loads == 2


# --- the run loop -----------------------------------------------------------------------------------
def test_prompt_teaches_only_experts_that_can_run(fake_ollama):
    fake_ollama.script("A plain answer.")
    orch(fake_ollama, fallback=[]).ask("hello", [IMG])
    system = fake_ollama.calls("/api/chat")[0]["messages"][0]["content"]
    assert system == TAGS.prompt_for(taught(registry())) == protocol.PROTOCOL_PROMPT  # ocr and detect only
    assert "caption" not in system and "[VISION: clip" not in system


def test_tag_for_an_expert_that_cannot_run_is_dropped_at_once(fake_ollama):
    fake_ollama.script("[VISION: caption]", "I can only read text and count things here.")
    t0 = time.perf_counter()
    final = orch(fake_ollama).ask("what is going on here?", [IMG])
    assert time.perf_counter() - t0 < 10 and NoWeights.loads == 0
    chats = fake_ollama.calls("/api/chat")
    assert len(chats) == 2  # the fallback experts looked instead; no round for the dropped tag
    ctx = chats[1]["messages"][-1]["content"]
    assert ctx.count("caption was not run") == 1
    assert "Note: caption was not run, it cannot run here: weights: not downloaded" in ctx
    assert final.trace.tags == [] and final.trace.fallback


def test_keyword_pick_that_cannot_run_is_skipped_and_the_rest_decides(fake_ollama):
    fake_ollama.script("The text is GRAND OPENING 50% OFF; its colour I cannot tell.")
    t0 = time.perf_counter()
    final = orch(fake_ollama).ask("Describe the text: what does it say?", [IMG])
    assert time.perf_counter() - t0 < 10 and NoWeights.loads == 0
    (chat,) = fake_ollama.calls("/api/chat")  # ocr decided: one call
    user = chat["messages"][-1]["content"]
    assert "GRAND OPENING" in user and user.count("caption was not run") == 1
    assert [e.expert for e in final.trace.experts] == ["ocr"]
    assert "caption (keyword): cannot run here" in final.trace.skipped


def test_tags_repeating_what_ran_or_without_an_image_are_dropped(fake_ollama):
    fake_ollama.script("[VISION: ocr]", "[VISION: ocr]\n[VISION: text]", "It says GRAND OPENING.")
    final = orch(fake_ollama, max_rounds=3, fallback=[]).ask("look", [IMG])
    # round 1 ran ocr; the repeat (and its alias) in turn 2 is dropped: one turn told plainly to answer
    assert len(fake_ollama.calls("/api/chat")) == 3
    assert fake_ollama.calls("/api/chat")[2]["messages"][-1]["content"] == protocol.NO_MORE_EXPERTS
    assert [e.expert for e in final.trace.experts] == ["ocr"] and final.answer == "It says GRAND OPENING."
    assert "[VISION: ocr] (already looked at)" in final.trace.skipped
    fake_ollama.reset()
    fake_ollama.script("Paris. [VISION: ocr]")
    final = orch(fake_ollama).ask("What is the capital of France?")
    assert len(fake_ollama.calls("/api/chat")) == 1 and final.answer == "Paris." and final.trace.experts == []


def test_real_clip_and_caption_without_weights_wait_for_nothing(fake_ollama, no_network, tmp_path):
    """The installed CLIP and BLIP-2 experts with no weights here and HF_HUB_OFFLINE unset: never taught,
    skipped at once when keywords pick them, no connection beyond loopback."""
    pytest.importorskip("transformers", reason="needs the [caption] extra")
    pytest.importorskip("open_clip", reason="needs the [clip] extra")
    from experts.caption import CaptionExpert
    from experts.clip import ClipExpert

    reg = Registry()
    for cls in (FakeOcr, FakeDetect, CaptionExpert, ClipExpert):
        reg.register(cls)
    settings = {"experts": {"caption": {"cache_dir": str(tmp_path)}, "clip": {"weights_dir": str(tmp_path)}}}
    o = orch(fake_ollama, reg, **settings)
    fake_ollama.responder = lambda path, body: "An answer."
    for question in ("What colour is the text?", "Describe this picture.", "这张海报是什么风格？"):
        t0 = time.perf_counter()
        final = o.ask(question, [IMG])
        assert time.perf_counter() - t0 < 20, question
        assert final.answer == "An answer."
    assert no_network == []
    assert not reg.get("caption").loaded and not reg.get("clip").loaded
    sent = json.dumps([c["messages"] for c in fake_ollama.calls("/api/chat")], ensure_ascii=False)
    assert "[VISION: caption" not in sent and "[VISION: clip" not in sent
    assert "caption was not run, it cannot run here: weights: not downloaded" in sent
    assert "clip was not run, it cannot run here: weights: not downloaded" in sent


# --- every door offers the same set ---------------------------------------------------------------
def test_health_names_what_cannot_run_and_refresh_rechecks(monkeypatch):
    s = start_stack()
    try:
        reg = s.app_proxy.orch.registry
        reg.register(NoWeights)
        health = httpx.get(s.url + "/_vision/health").json()
        assert "caption" not in health["experts"] and "ocr" in health["experts"]
        assert health["unavailable"] == {"caption": "weights: not downloaded; fetch once: get-weights caption"}
        monkeypatch.setattr(NoWeights, "status", lambda self: {"ok": True, "engine": "test"})  # fetched since
        assert "caption" not in httpx.get(s.url + "/_vision/health").json()["experts"]  # remembered
        health = httpx.get(s.url + "/_vision/health?refresh=1").json()
        assert "caption" in health["experts"] and health["unavailable"] == {}
    finally:
        stop_stack(s)


def test_serve_start_up_line_lists_what_can_run(monkeypatch, fake_ollama):
    pytest.importorskip("uvicorn", reason="needs the [serve] extra")
    from tests.test_proxy_support import capture_serve

    monkeypatch.setattr(common_mod, "configured_registry", lambda settings: registry())
    capture_serve(monkeypatch)
    r = CliRunner().invoke(cli, ["serve", "--upstream", fake_ollama.url, "--port", "0"])
    assert r.exit_code == 0, r.output
    head = r.stderr.splitlines()
    assert "experts: detect, ocr)" in head[0]
    assert head[1] == "  caption: not offered, weights: not downloaded; fetch once: get-weights caption"


def test_mcp_offers_and_describes_only_what_can_run():
    pytest.importorskip("mcp", reason="needs the [mcp] extra")
    from router.serve.mcp_server import VisionMcp

    server = VisionMcp(Settings(cache_dir=""), registry())
    assert [t.name for t in server.tools()] == ["detect", "ocr"]
    assert server.left_out["caption"].startswith("weights: not downloaded")
    text = server.server.instructions
    assert "detect counts" in text and "ocr reads text" in text
    assert "caption" not in text and "clip" not in text
    assert server.protocol == protocol.PROTOCOL_PROMPT


# --- progress for streaming clients -------------------------------------------------------------------
def _chat(url: str, **body) -> list[dict]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "what is written here?", "images": [IMAGE_B64]}],
        **body,
    }
    r = httpx.post(url + "/api/chat", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return ndjson(r.content) if body.get("stream", True) else [r.json()]


def test_progress_in_the_thinking_field_only_when_turned_on():
    s = start_stack(config=ProxyConfig(progress=True))
    try:
        s.fake.responder = lambda path, body: "It says SALE."
        chunks = _chat(s.url)
        thinking = [c["message"].get("thinking") for c in chunks if c["message"].get("thinking")]
        assert thinking == ["looking at image 1: ocr…\n"]
        first_text = next(i for i, c in enumerate(chunks) if c["message"]["content"])
        assert chunks.index(next(c for c in chunks if c["message"].get("thinking"))) < first_text
        assert "".join(c["message"]["content"] for c in chunks) == "It says SALE."
        assert sum(c["done"] for c in chunks) == 1
        # a client that said think: false, and a client that does not stream, get none
        assert not any(c["message"].get("thinking") for c in _chat(s.url, think=False))
        (whole,) = _chat(s.url, stream=False)
        assert "thinking" not in whole["message"]
    finally:
        stop_stack(s)
    s = start_stack()  # off by default
    try:
        s.fake.responder = lambda path, body: "It says SALE."
        assert not any(c["message"].get("thinking") for c in _chat(s.url))
    finally:
        stop_stack(s)


def test_progress_arrives_before_a_slow_expert_finishes():
    release = threading.Event()

    class SlowOcr(FakeOcr):
        def _analyze(self, image, args):
            release.wait(10)
            return super()._analyze(image, args)

    s = start_stack(config=ProxyConfig(progress=True))
    s.app_proxy.orch.registry.register(SlowOcr)
    try:
        s.fake.responder = lambda path, body: "It says SALE."
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "what is written here?", "images": [IMAGE_B64]}],
        }
        with httpx.stream("POST", s.url + "/api/chat", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = json.loads(next(lines))
            assert first["message"]["thinking"].startswith("looking at image 1: ocr")  # while ocr still runs
            release.set()
            rest = [json.loads(line) for line in lines if line.strip()]
        assert rest[-1]["done"] is True
    finally:
        release.set()
        stop_stack(s)

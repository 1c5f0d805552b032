"""Issue 17 with a real language model (SmolLM2-135M-Instruct, greedy, offline: the ``real_ollama`` fixture):
what the router guarantees, whatever the model writes. Keyword-decided questions take exactly one LLM call
and no tag or protocol text reaches the user; CLIP and BLIP-2 installed without weights are never offered,
named by health, and a question whose keywords pick them is answered without waiting on them, with the
network blocked. Calls, routing and what reaches the user are asserted, never the model's wording."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from experts.registry import Registry
from router.core.config import Settings
from router.core.orchestrator import Orchestrator
from router.serve.proxy import ProxyServer, create_app
from tests.conftest import png_bytes
from tests.router_experts import FakeDetect, FakeOcr

IMG = png_bytes(120, 80, (250, 250, 250))
IMG_B64 = base64.b64encode(IMG).decode("ascii")
NUM_PREDICT = 48  # enough for a sentence or an echo; keeps the tier to a few minutes on two cores
# Text only the router's old prompts held: a model can only echo what it was shown.
NEVER_SHOWN = ("ask a vision expert", "Assistant: [VISION", "User: [image")


def _registry(tmp_path, with_torch_experts: bool = False) -> tuple[Registry, dict]:
    reg = Registry()
    for cls in (FakeOcr, FakeDetect):
        reg.register(cls)
    experts: dict = {}
    if with_torch_experts:
        pytest.importorskip("transformers", reason="needs the [caption] extra")
        pytest.importorskip("open_clip", reason="needs the [clip] extra")
        from experts.caption import CaptionExpert
        from experts.clip import ClipExpert

        reg.register(CaptionExpert)
        reg.register(ClipExpert)
        # Installed, weights nowhere: empty caches of their own (the machine's caches do not decide).
        experts = {"caption": {"cache_dir": str(tmp_path)}, "clip": {"weights_dir": str(tmp_path)}}
    return reg, experts


def _orch(real, reg: Registry, experts: dict) -> Orchestrator:
    settings = Settings(ollama_host=real.url, model=real.model_name, cache_dir="", experts=experts)
    return Orchestrator(settings, registry=reg)


def _sent(real) -> str:
    return json.dumps([c["messages"] for c in real.calls("/api/chat")], ensure_ascii=False)


@pytest.mark.parametrize(
    "question",
    ["What is written on this sign?", "How many boxes are there?", "图片上写了什么？", "图里有几个盒子？"],
)
def test_router_decided_question_takes_one_llm_call(real_ollama, tmp_path, question):
    """Decided by keywords or by meaning (图里有几个盒子？ matches no keyword since issue 23): one LLM call."""
    reg, experts = _registry(tmp_path)
    final = _orch(real_ollama, reg, experts).ask(question, [IMG], options={"num_predict": NUM_PREDICT})
    assert len(real_ollama.calls("/api/chat")) == 1
    decided = final.trace.keywords or (final.trace.semantic or {}).get("decided")
    assert decided and final.trace.experts and len(final.trace.llm_calls) == 1
    sent = _sent(real_ollama)
    assert "[VISION" not in sent  # the decided path teaches no tag and shows no example of one
    assert not any(s in sent for s in NEVER_SHOWN)
    assert "[VISION" not in final.answer and "[/VISION" not in final.answer  # tags it wrote are ignored, unshown
    assert not any(s in final.answer for s in NEVER_SHOWN)


def test_experts_without_weights_are_not_offered_and_cost_no_wait(real_ollama, tmp_path, no_network):
    reg, experts = _registry(tmp_path, with_torch_experts=True)
    orch = _orch(real_ollama, reg, experts)
    assert reg.runnable() == ["detect", "ocr"]
    for question in ("What colour is the text?", "Describe this picture."):
        real_ollama.reset()
        final = orch.ask(question, [IMG], options={"num_predict": NUM_PREDICT})
        sent = _sent(real_ollama)
        assert "[VISION: caption" not in sent and "[VISION: clip" not in sent  # never offered
        assert sent.count("caption was not run, it cannot run here") >= 1  # one line says why
        # Nothing waited on an expert: the time not spent in the model is the fake experts' milliseconds.
        llm_ms = sum(c.total_ms for c in final.trace.llm_calls)
        assert final.trace.total_ms - llm_ms < 3000, (final.trace.total_ms, llm_ms)
        assert len(final.trace.llm_calls) <= 2, question
    assert no_network == []  # no connection beyond this machine was even tried
    assert not reg.get("caption").loaded and not reg.get("clip").loaded


def test_proxy_in_front_of_the_real_model_names_and_skips_experts_without_weights(real_ollama, tmp_path, no_network):
    reg, experts = _registry(tmp_path, with_torch_experts=True)
    settings = Settings(model=real_ollama.model_name, cache_dir="", experts=experts)
    with ProxyServer(create_app(settings, reg, real_ollama.url)) as proxy:
        health = httpx.get(proxy.url + "/_vision/health").json()
        assert health["experts"] == ["detect", "ocr"]
        assert set(health["unavailable"]) == {"caption", "clip"}
        body = {
            "model": real_ollama.model_name,
            "options": {"num_predict": NUM_PREDICT},
            "messages": [{"role": "user", "content": "And what colour is the text?", "images": [IMG_B64]}],
        }
        r = httpx.post(proxy.url + "/api/chat", json=body, timeout=300)
        assert r.status_code == 200
        chunks = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert sum(c["done"] for c in chunks) == 1
    answer = "".join(c["message"]["content"] for c in chunks)
    assert "[VISION" not in answer
    assert len(real_ollama.calls("/api/chat")) == 1  # ocr decided; caption skipped at once
    assert no_network == []

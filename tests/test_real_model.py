"""The real-model server itself (tests/real_ollama.py): the real ``ollama`` client talks to it, it
streams what a real model generates, and greedy decoding makes it deterministic. Protocol, not wording."""

from __future__ import annotations

import httpx
import ollama
import pytest

QUESTION = [{"role": "user", "content": "Name one colour."}]


def test_the_ollama_client_streams_a_generated_answer(real_ollama):
    client = ollama.Client(host=real_ollama.url)
    parts = list(client.chat(real_ollama.model_name, messages=QUESTION, stream=True, options={"num_predict": 12}))
    text = "".join(p.message.content for p in parts)
    assert text.strip()
    assert len(parts) > 2  # token by token, not one blob
    last = parts[-1]
    assert last.done and last.done_reason in ("stop", "length")
    assert 0 < last.eval_count <= 12 and last.prompt_eval_count > 5
    assert len(real_ollama.calls("/api/chat")) == 1


def test_non_stream_chat_and_generate(real_ollama):
    client = ollama.Client(host=real_ollama.url)
    chat = client.chat(real_ollama.model_name, messages=QUESTION, stream=False, options={"num_predict": 8})
    assert chat.message.content.strip() and chat.done and chat.eval_count <= 8
    gen = client.generate(real_ollama.model_name, prompt="Say hello.", stream=False, options={"num_predict": 8})
    assert gen.response.strip() and gen.done


def test_num_predict_caps_the_reply(real_ollama):
    client = ollama.Client(host=real_ollama.url)
    prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    r = client.chat(real_ollama.model_name, messages=prompt, stream=False, options={"num_predict": 5})
    assert r.eval_count == 5 and r.done_reason == "length"


def test_greedy_decoding_is_deterministic(real_ollama):
    client = ollama.Client(host=real_ollama.url)

    def answer() -> str:
        r = client.chat(real_ollama.model_name, messages=QUESTION, stream=False, options={"num_predict": 16})
        return r.message.content

    assert answer() == answer()


def test_show_tags_version_and_unknown_model(real_ollama):
    client = ollama.Client(host=real_ollama.url)
    shown = client.show(real_ollama.model_name)
    assert "completion" in shown.capabilities and "vision" not in shown.capabilities
    assert real_ollama.model_name in [m.model for m in client.list().models]
    assert httpx.get(real_ollama.url + "/api/version").json()["version"]
    with pytest.raises(ollama.ResponseError) as err:
        client.chat("no-such-model", messages=QUESTION)
    assert err.value.status_code == 404


def test_openai_route_streams(real_ollama):
    body = {
        "model": real_ollama.model_name,
        "messages": QUESTION,
        "stream": True,
        "max_tokens": 8,
    }
    with httpx.stream("POST", real_ollama.url + "/v1/chat/completions", json=body, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 3

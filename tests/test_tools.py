"""Experts as native tools: the definitions, `vision-router tools`, and the orchestrator's tools
protocol (``tools`` / ``auto`` with fall back to tags), directly and through the proxy, with the
client's own tools merged in and handed back unexecuted."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from router.commands.tools import tools_command
from router.core.orchestrator import Orchestrator, ToolCalls
from router.core.protocols import TAGS, TOOLS, taught
from router.core.toolspec import expert_for_tool, ollama_tools, openai_tools
from tests.fake_ollama import FakeModel, FakeOllama, Reply
from tests.test_proxy_support import (
    IMAGE,
    IMAGE_B64,
    MODEL,
    OCR_TEXT,
    TextExpert,
    models,
    ndjson,
    no_image_bytes,
    registry,
    settings,
    sse_events,
    start_stack,
    stop_stack,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tag_prompt() -> str:
    """The tag protocol for this registry's experts (the prompt is made from the experts that can run)."""
    return TAGS.prompt_for(taught(registry()))


def tools_prompt() -> str:
    return TOOLS.prompt_for(taught(registry()))


def call(name: str, **arguments) -> dict:
    return {"function": {"name": name, "arguments": arguments}}


# --- definitions ----------------------------------------------------------------------------------
def test_definitions_come_from_the_registry():
    tools = {t["function"]["name"]: t for t in ollama_tools(registry())}
    assert set(tools) == {"vision_ocr", "vision_boom", "vision_hang"}
    ocr = tools["vision_ocr"]
    assert ocr["type"] == "function"
    params = ocr["function"]["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["image"]["type"] == "integer"
    assert params["properties"]["query"]["type"] == "string"
    assert "Read the text" in ocr["function"]["description"]
    assert expert_for_tool("vision_ocr", registry()) == "ocr"
    assert expert_for_tool("vision_text", registry()) == "ocr"  # aliases work too
    assert expert_for_tool("get_weather", registry()) is None
    oa = {t["function"]["name"]: t for t in openai_tools(registry())}
    assert "default" not in oa["vision_ocr"]["function"]["parameters"]["properties"]["query"]


def test_tools_command_prints_json_for_installed_experts():
    r = CliRunner().invoke(tools_command, ["--format", "openai"])
    assert r.exit_code == 0, r.output
    tools = json.loads(r.output)
    assert tools and all(t["function"]["name"].startswith("vision_") for t in tools)
    assert all("image" in t["function"]["parameters"]["properties"] for t in tools)
    r = CliRunner().invoke(tools_command, ["--expert", "nope"])
    assert r.exit_code != 0 and "unknown expert" in r.output


# --- the orchestrator's tools protocol ----------------------------------------------------------------
def orch(fake: FakeOllama, **over) -> Orchestrator:
    """The model decides (native tool calls): nothing looks before its first turn unless a test says so."""
    over.setdefault("semantic", False)
    over.setdefault("fallback", [])
    return Orchestrator(settings(ollama_host=fake.url, **over), registry=registry())


@pytest.fixture
def fake():
    TextExpert.runs = 0
    with FakeOllama(models()) as f:
        yield f


def test_tools_protocol_runs_our_calls_and_answers_with_tool_messages(fake):
    fake.script(Reply(tool_calls=[call("vision_ocr", image=1)]), Reply(f"It says {OCR_TEXT}."))
    final = orch(fake, protocol="tools").ask("Tell me about it", [IMAGE])
    assert final.answer == f"It says {OCR_TEXT}."
    first, second = fake.calls("/api/chat")
    names = [t["function"]["name"] for t in first["tools"]]
    assert "vision_ocr" in names
    assert first["messages"][0]["role"] == "system" and tools_prompt() in first["messages"][0]["content"]
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "vision_ocr"
    assert tool["role"] == "tool" and tool["tool_name"] == "vision_ocr" and OCR_TEXT in tool["content"]
    assert [e.source for e in final.trace.experts] == ["tool"]
    assert final.stats["eval_count"] >= 2  # summed over both turns
    no_image_bytes(fake)


def test_tools_protocol_is_bounded(fake):
    fake.responder = lambda path, body: Reply(tool_calls=[call("vision_ocr", query=str(len(body["messages"])))])
    final = orch(fake, protocol="tools", max_rounds=2).ask("Tell me about it", [IMAGE])
    sent = fake.calls("/api/chat")
    # two rounds, a last turn without our tools, then one turn told plainly to answer (issue 11)
    assert len(sent) == 4
    assert not sent[-2].get("tools") and not sent[-1].get("tools")
    assert final.trace.ignored_tags
    # no silent empty answer: the user is told, with what the experts found
    assert not final.answered and final.answer.startswith("The model gave no answer")
    assert OCR_TEXT in final.answer


def test_tools_protocol_answers_a_bad_call_with_an_error(fake):
    fake.script(Reply(tool_calls=[call("vision_ocr", image=7)]), Reply("There is only one image."))
    final = orch(fake, protocol="tools").ask("Tell me about it", [IMAGE])
    assert final.answer == "There is only one image."
    tool = fake.calls("/api/chat")[-1]["messages"][-1]
    assert tool["role"] == "tool" and "there is no image 7" in tool["content"]


def test_auto_uses_tools_when_the_model_has_the_capability(fake):
    fake.script(Reply(tool_calls=[call("vision_ocr")]), Reply("SALE"))
    orch(fake, protocol="auto").ask("Tell me about it", [IMAGE])
    assert fake.calls("/api/chat")[0]["tools"]


def test_auto_uses_tags_without_the_tools_capability(fake):
    fake.add_model(FakeModel("plain", capabilities=["completion"]))
    fake.script("[VISION: ocr]", "SALE")
    final = orch(fake, protocol="auto", model="plain").ask("Tell me about it", [IMAGE])
    assert final.answer == "SALE"
    first = fake.calls("/api/chat")[0]
    assert not first.get("tools") and tag_prompt() in first["messages"][0]["content"]


def test_auto_falls_back_to_tags_on_a_malformed_call(fake):
    fake.script(Reply(tool_calls=[call("vision_ocrx", image=1)]), Reply("[VISION: ocr]"), Reply("It is SALE."))
    final = orch(fake, protocol="auto").ask("Tell me about it", [IMAGE])
    assert final.answer == "It is SALE."
    sent = fake.calls("/api/chat")
    assert len(sent) == 3
    assert sent[0]["tools"] and not sent[1].get("tools")
    assert tag_prompt() in sent[1]["messages"][0]["content"]
    assert any("vision_ocrx" in m for m in final.trace.malformed_tags)
    assert TextExpert.runs == 1


def test_client_tools_are_merged_and_their_calls_handed_back(fake):
    fake.script(Reply(tool_calls=[call("get_weather", city="Tokyo")]))

    async def run():
        o = orch(fake, protocol="tools")
        return [
            ev async for ev in o.stream([{"role": "user", "content": "Weather?", "images": [IMAGE]}], tools=[WEATHER])
        ]

    import asyncio

    events = asyncio.run(run())
    handed = [e for e in events if isinstance(e, ToolCalls)]
    assert handed and handed[0].calls == [call("get_weather", city="Tokyo")]
    assert events[-1].tool_calls == [call("get_weather", city="Tokyo")]
    sent = fake.calls("/api/chat")
    assert len(sent) == 1  # not executed, not looped
    names = [t["function"]["name"] for t in sent[0]["tools"]]
    assert "get_weather" in names and "vision_ocr" in names


def test_tags_protocol_still_passes_client_tools(fake):
    fake.script(Reply(tool_calls=[call("get_weather", city="Paris")]))

    async def run():
        o = orch(fake, protocol="tags")
        return [
            ev async for ev in o.stream([{"role": "user", "content": "Weather?", "images": [IMAGE]}], tools=[WEATHER])
        ]

    import asyncio

    events = asyncio.run(run())
    assert isinstance(events[-2], ToolCalls)
    assert [t["function"]["name"] for t in fake.calls("/api/chat")[0]["tools"]] == ["get_weather"]


# --- through the proxy ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tools_stack():
    s = start_stack(settings(protocol="tools"))
    yield s
    stop_stack(s)


def test_proxy_tools_protocol_end_to_end(tools_stack):
    s = tools_stack
    s.fake.reset()
    s.fake.script(Reply(tool_calls=[call("vision_ocr", image=1)]), Reply(f"It says {OCR_TEXT}.", chunk_size=3))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about it", "images": [IMAGE_B64]}],
        "tools": [],
    }
    chunks = ndjson(httpx.post(s.url + "/api/chat", json=body, timeout=30).content)
    assert "".join(c["message"]["content"] for c in chunks) == f"It says {OCR_TEXT}."
    assert [c["done"] for c in chunks].count(True) == 1
    assert not any(c["message"].get("tool_calls") for c in chunks)  # our calls stay hidden
    no_image_bytes(s.fake)


def test_proxy_hands_client_tool_calls_back_natively(tools_stack):
    s = tools_stack
    s.fake.reset()
    s.fake.script(Reply(tool_calls=[call("get_weather", city="Tokyo")]))
    body = {
        "model": MODEL,
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Weather where this was taken?", "images": [IMAGE_B64]}],
    }
    chunks = ndjson(httpx.post(s.url + "/api/chat", json=body, timeout=30).content)
    with_calls = [c for c in chunks if c["message"].get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["done"] is False
    assert with_calls[0]["message"]["tool_calls"] == [call("get_weather", city="Tokyo")]
    assert chunks[-1]["done"] is True and chunks[-1]["done_reason"] == "stop"
    s.fake.script(Reply(tool_calls=[call("get_weather", city="Tokyo")]))
    whole = httpx.post(s.url + "/api/chat", json=dict(body, stream=False), timeout=30).json()
    assert whole["message"]["tool_calls"] == [call("get_weather", city="Tokyo")]


def test_proxy_hands_client_tool_calls_back_on_openai_route(tools_stack):
    s = tools_stack
    s.fake.reset()
    s.fake.script(Reply(tool_calls=[call("get_weather", city="Tokyo")]))
    body = {
        "model": MODEL,
        "stream": True,
        "tools": [WEATHER],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}"}},
                ],
            }
        ],
    }
    events = sse_events(httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30).content)
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    calls = [tc for o in objs for tc in o["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}
    assert calls[0]["id"] and calls[0]["type"] == "function"
    assert [o["choices"][0]["finish_reason"] for o in objs if o["choices"][0]["finish_reason"]] == ["tool_calls"]
    # The client runs the tool and continues: its tool message finds its way back by tool_call_id.
    s.fake.script("It is sunny in Tokyo.", "It is sunny in Tokyo.")  # the fallback experts ask twice
    follow = dict(
        body,
        stream=False,
        messages=body["messages"]
        + [
            {"role": "assistant", "content": None, "tool_calls": [dict(calls[0], index=None)]},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        ],
    )
    out = httpx.post(s.url + "/v1/chat/completions", json=follow, timeout=30).json()
    assert out["choices"][0]["message"]["content"] == "It is sunny in Tokyo."
    last = s.fake.calls("/api/chat")[-1]["messages"]
    assert last[-1] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
    no_image_bytes(s.fake)

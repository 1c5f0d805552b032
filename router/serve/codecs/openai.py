"""The OpenAI Chat Completions codec of the proxy: requests in, chunks and errors out.

Converted once at the edge (ollama-contract.md A.7), so the orchestrator only ever sees Ollama's
native messages: content-part arrays become text plus bare-base64 ``images``, ``data:`` URLs are
the only accepted image URLs, tool-call arguments turn from JSON strings into objects (and back on
the way out), and sampling parameters map onto Ollama ``options``.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from router.core.orchestrator import Final, Progress, TextDelta, ThinkingDelta, ToolCalls
from router.serve.codecs import ChatMessage, Routed
from router.serve.wire import BadRequest, GoStruct, may_hold, validate


class OpenAIRequestError(BadRequest):
    """A request the OpenAI route refuses (400 ``invalid_request_error``)."""


_OPTION_MAP = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}


class OAFunctionCall(GoStruct):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class OAToolCall(GoStruct):
    id: str | None = None
    type: str | None = None
    function: OAFunctionCall | None = None


class OAMessage(GoStruct):
    """openai.Message: ``content`` is a string or a list of parts (checked by hand: their keys are exact)."""

    role: str | None = None
    content: str | list[Any] | None = None
    reasoning: str | None = None
    tool_calls: list[OAToolCall] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class OAStreamOptions(GoStruct):
    include_usage: bool | None = None


class OAReasoning(GoStruct):
    effort: str | None = None


class OARequest(GoStruct):
    """openai.ChatCompletionRequest: the fields this route reads."""

    model: str | None = None
    messages: list[OAMessage] | None = None
    stream: bool | None = None
    stream_options: OAStreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_p: float | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning: OAReasoning | None = None
    reasoning_effort: str | None = None


def to_native(body: Any) -> Routed:
    """Convert a ``/v1/chat/completions`` body. Image parts stay base64 strings (decoded later)."""
    req: OARequest = validate(OARequest, body)
    if not req.model:
        raise OpenAIRequestError("model is required", "model")
    if not req.messages:
        raise OpenAIRequestError("messages is required and must be a non-empty list", "messages")
    call_names: dict[str, str] = {}
    messages = [_message(m, i, call_names) for i, m in enumerate(req.messages)]
    options = _options(req)
    fmt: Any = None
    rf = req.response_format
    if rf is not None:
        kind = rf.get("type")
        if kind == "json_object":
            fmt = "json"
        elif kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            fmt = schema if schema is not None else "json"

    think: Any = None
    effort = req.reasoning_effort
    if effort is None and req.reasoning is not None:
        effort = req.reasoning.effort
    if effort is not None:
        if effort not in ("high", "medium", "low", "max", "none"):
            raise OpenAIRequestError(f"invalid reasoning value: {effort!r}", "reasoning_effort")
        think = False if effort == "none" else effort

    stream = req.stream is True
    include_usage = bool(stream and req.stream_options is not None and req.stream_options.include_usage)
    return Routed(
        req.model,
        messages,
        stream=stream,
        options=options or None,
        format=fmt,
        think=think,
        tools=list(req.tools or []),
        include_usage=include_usage,
    )


def _options(req: OARequest) -> dict[str, Any]:
    """Sampling parameters as Ollama ``options``."""
    options: dict[str, Any] = {}
    for key, opt in _OPTION_MAP.items():
        value = getattr(req, key)
        if value is not None:
            options[opt] = value
    if req.stop is not None:
        options["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    return options


def _parts(content: Any, i: int) -> tuple[list[str], list[str]]:
    """The texts and base64 images of one message's ``content``."""
    if isinstance(content, str):
        return [content], []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content or ()):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise OpenAIRequestError(f"messages[{i}].content[{j}] must be an object", f"messages[{i}].content")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if text is not None and not isinstance(text, str):
                raise OpenAIRequestError(f"messages[{i}].content[{j}].text must be a string", f"messages[{i}].content")
            texts.append(text or "")
        elif kind == "image_url":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            images.append(data_url_to_base64(url, f"messages[{i}].content[{j}].image_url"))
        else:
            raise OpenAIRequestError(
                f"messages[{i}].content[{j}]: unsupported content part type {kind!r} (text and "
                "image_url are supported)",
                f"messages[{i}].content",
            )
    return texts, images


def _message(m: OAMessage, i: int, call_names: dict[str, str]) -> ChatMessage:
    role = (m.role or "user").lower()
    if role == "developer":
        role = "system"
    texts, images = _parts(m.content, i)
    out = ChatMessage(role, "\n".join(t for t in texts if t), images)
    if m.reasoning:
        out.extra["thinking"] = m.reasoning
    if role == "assistant" and m.tool_calls:
        out.extra["tool_calls"] = [_tool_call(tc, i, call_names) for tc in m.tool_calls]
    if role == "tool":
        name = m.name or call_names.get(m.tool_call_id or "")
        if name:
            out.extra["tool_name"] = name
    return out


def _tool_call(tc: OAToolCall, i: int, call_names: dict[str, str]) -> dict[str, Any]:
    fn = tc.function or OAFunctionCall()
    args: Any = fn.arguments
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            raise OpenAIRequestError(
                f"messages[{i}].tool_calls: arguments are not valid JSON", f"messages[{i}].tool_calls"
            ) from None
    if args is not None and not isinstance(args, dict):
        raise OpenAIRequestError(
            f"messages[{i}].tool_calls: arguments must be a JSON object", f"messages[{i}].tool_calls"
        )
    name = fn.name or ""
    if tc.id:
        call_names[tc.id] = name
    return {"function": {"name": name, "arguments": args or {}}}


def data_url_to_base64(url: Any, where: str) -> str:
    """The bare base64 inside a ``data:`` image URL; anything else is refused, as Ollama does."""
    if not isinstance(url, str) or not url:
        raise OpenAIRequestError(f"{where}: missing image URL", where)
    if not url.startswith("data:"):
        raise OpenAIRequestError(
            f"{where}: only base64 data URLs (data:image/png;base64,...) are supported, not remote image URLs",
            where,
        )
    head, sep, payload = url.partition(",")
    if not sep or ";base64" not in head:
        raise OpenAIRequestError(f"{where}: the data URL is not base64-encoded", where)
    return payload


# --- responses ------------------------------------------------------------------------------------
def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(6)


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, typed the way Ollama types it."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def wire_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native tool calls -> OpenAI's (``arguments`` as a JSON string, with ids)."""
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") or {}
        args = fn.get("arguments", {})
        out.append(
            {
                "id": c.get("id") or "call_" + secrets.token_hex(4),
                "index": i,
                "type": "function",
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
    return out


def usage(stats: dict[str, int]) -> dict[str, int]:
    prompt = int(stats.get("prompt_eval_count", 0) or 0)
    completion = int(stats.get("eval_count", 0) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(done_reason: str | None, had_tool_calls: bool) -> str:
    if had_tool_calls:
        return "tool_calls"
    return done_reason or "stop"


class ChunkWriter:
    """Builds the SSE chunks of one streamed completion."""

    def __init__(self, model: str) -> None:
        self.id = new_id()
        self.created = int(time.time())
        self.model = model

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return sse(obj)

    def content(self, text: str) -> bytes:
        return self._chunk({"role": "assistant", "content": text}, None)

    def reasoning(self, text: str) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "reasoning": text}, None)

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "tool_calls": wire_tool_calls(calls)}, None)

    def finish(self, reason: str) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, reason)

    def usage(self, stats: dict[str, int]) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": [],
                "usage": usage(stats),
            }
        )


def completion(
    model: str, answer: str, thinking: str, tool_calls: list[dict[str, Any]], done_reason: str, stats: dict[str, int]
) -> dict[str, Any]:
    """The single ``chat.completion`` object of a non-streamed request."""
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if thinking:
        message["reasoning"] = thinking
    if tool_calls:
        message["tool_calls"] = wire_tool_calls(tool_calls)
    return {
        "id": new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(done_reason, bool(tool_calls))}],
        "usage": usage(stats),
    }


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


# --- the codec --------------------------------------------------------------------------------------
class OpenAICodec:
    """``/v1/chat/completions``."""

    kind = "openai"
    media_type = "text/event-stream"
    may_route = may_hold("image_url")

    def parse(self, doc: Any) -> Routed:
        return to_native(doc)

    def error(self, status: int, message: str, param: str | None = None) -> Response:
        return JSONResponse(error_body(message, status, param), status_code=status)

    def writer(self, req: Routed) -> OpenAIWriter:
        return OpenAIWriter(req.model, req.include_usage)


class OpenAIWriter:
    """The SSE chunks, or the one ``chat.completion`` object, of one answer."""

    content_type = "application/json"

    def __init__(self, model: str, include_usage: bool) -> None:
        self.w = ChunkWriter(model)
        self.model = model
        self.include_usage = include_usage
        self.had_calls = False

    def chunk(self, ev: Any) -> bytes | None:
        if isinstance(ev, TextDelta):
            return self.w.content(ev.text)
        if isinstance(ev, (ThinkingDelta, Progress)):
            return self.w.reasoning(ev.text)
        if isinstance(ev, ToolCalls):
            self.had_calls = True
            return self.w.tool_calls(ev.calls)
        if isinstance(ev, Final):
            out = self.w.finish(finish_reason(ev.done_reason, self.had_calls or bool(ev.tool_calls)))
            if self.include_usage:
                out += self.w.usage(ev.stats)
            return out + DONE
        return None

    def whole(self, events: list[Any]) -> dict[str, Any]:
        final = events[-1]
        assert isinstance(final, Final)
        return completion(self.model, final.answer, final.thinking, final.tool_calls, final.done_reason, final.stats)

    def stream_error(self, message: str, status: int) -> bytes:
        return sse(error_body(message, status))

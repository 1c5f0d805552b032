"""The OpenAI Chat Completions boundary of the proxy: requests in, chunks and errors out.

Converted once at the edge (ollama-contract.md A.7), so the orchestrator only ever sees Ollama's
native messages: content-part arrays become text plus bare-base64 ``images``, ``data:`` URLs are
the only accepted image URLs, tool-call arguments turn from JSON strings into objects (and back on
the way out), and sampling parameters map onto Ollama ``options``.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from experts.errors import VisionRouterError


class OpenAIRequestError(VisionRouterError):
    """A request the OpenAI route refuses (400 ``invalid_request_error``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class NativeChat:
    """An OpenAI chat request in Ollama's terms."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    format: Any = None
    think: Any = None
    tools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def image_count(self) -> int:
        return sum(len(m.get("images") or ()) for m in self.messages)


_OPTION_MAP = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}


def to_native(body: dict[str, Any]) -> NativeChat:
    """Convert a ``/v1/chat/completions`` body. Image parts stay base64 strings (decoded later)."""
    model = body.get("model")
    if not model or not isinstance(model, str):
        raise OpenAIRequestError("model is required", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise OpenAIRequestError("messages is required and must be a non-empty list", "messages")
    call_names: dict[str, str] = {}
    messages = [_message(m, i, call_names) for i, m in enumerate(raw_messages)]

    options: dict[str, Any] = {}
    for key, opt in _OPTION_MAP.items():
        if body.get(key) is not None:
            options[opt] = body[key]
    stop = body.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)

    fmt: Any = None
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_object":
            fmt = "json"
        elif kind == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            fmt = schema if schema is not None else "json"

    think: Any = None
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(body.get("reasoning"), dict):
        effort = body["reasoning"].get("effort")
    if effort is not None:
        if effort not in ("high", "medium", "low", "max", "none"):
            raise OpenAIRequestError(f"invalid reasoning value: {effort!r}", "reasoning_effort")
        think = False if effort == "none" else effort

    stream = body.get("stream") is True
    so = body.get("stream_options")
    include_usage = bool(stream and isinstance(so, dict) and so.get("include_usage"))
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    return NativeChat(model, messages, stream, include_usage, options, fmt, think, tools)


def _message(m: Any, i: int, call_names: dict[str, str]) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise OpenAIRequestError(f"messages[{i}] must be an object", f"messages[{i}]")
    role = str(m.get("role") or "user").lower()
    if role == "developer":
        role = "system"
    out: dict[str, Any] = {"role": role}
    content = m.get("content")
    texts: list[str] = []
    images: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise OpenAIRequestError(f"messages[{i}].content[{j}] must be an object", f"messages[{i}].content")
            kind = part.get("type")
            if kind == "text":
                texts.append(str(part.get("text") or ""))
            elif kind == "image_url":
                url = part.get("image_url")
                if isinstance(url, dict):
                    url = url.get("url")
                images.append(data_url_to_base64(url, f"messages[{i}].content[{j}].image_url"))
            else:
                raise OpenAIRequestError(
                    f"messages[{i}].content[{j}]: unsupported content part type {kind!r} (text and "
                    "image_url are supported)", f"messages[{i}].content"
                )
    elif content is not None:
        raise OpenAIRequestError(f"messages[{i}].content must be a string or a list of parts", f"messages[{i}]")
    out["content"] = "\n".join(t for t in texts if t)
    if images:
        out["images"] = images
    if m.get("reasoning"):
        out["thinking"] = str(m["reasoning"])
    if role == "assistant" and m.get("tool_calls"):
        calls = []
        for tc in m["tool_calls"]:
            fn = (tc or {}).get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    raise OpenAIRequestError(
                        f"messages[{i}].tool_calls: arguments are not valid JSON", f"messages[{i}].tool_calls"
                    ) from None
            name = str(fn.get("name") or "")
            if tc.get("id"):
                call_names[str(tc["id"])] = name
            calls.append({"function": {"name": name, "arguments": args or {}}})
        out["tool_calls"] = calls
    if role == "tool":
        name = m.get("name") or call_names.get(str(m.get("tool_call_id") or ""))
        if name:
            out["tool_name"] = name
    return out


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
        out.append({
            "id": c.get("id") or "call_" + secrets.token_hex(4),
            "index": i,
            "type": "function",
            "function": {"name": fn.get("name", ""),
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
        })
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
        return sse({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_ollama", "choices": [], "usage": usage(stats),
        })


def completion(model: str, answer: str, thinking: str, tool_calls: list[dict[str, Any]], done_reason: str,
               stats: dict[str, int]) -> dict[str, Any]:
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

"""Ollama's own routes, ``/api/chat`` and ``/api/generate``: requests in, NDJSON chunks and
``{"error": ...}`` out (ollama-contract.md A.1-A.3)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from starlette.responses import JSONResponse, Response

from router.core.orchestrator import Final, Progress, TextDelta, ThinkingDelta, ToolCalls
from router.serve.codecs import ChatMessage, Routed
from router.serve.wire import NativeRequest, may_hold, validate

NDJSON = "application/x-ndjson"
JSON_CT = "application/json; charset=utf-8"
STAT_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
_MAY_HOLD_IMAGES = may_hold("image")  # "images" in any case or spelling Go's decoder accepts


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def line(obj: Any) -> bytes:
    """One NDJSON line."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error(status: int, message: str, param: str | None = None) -> Response:
    """Ollama's error shape (never ``{"detail": ...}``)."""
    return JSONResponse({"error": message}, status_code=status)


class NativeCodec:
    """``/api/chat`` (``chat=True``) or ``/api/generate``."""

    media_type = NDJSON
    may_route = _MAY_HOLD_IMAGES

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.kind = "chat" if chat else "generate"

    def parse(self, doc: Any) -> Routed:
        req: NativeRequest = validate(NativeRequest, doc)
        if self.chat:
            messages = [
                ChatMessage(
                    m.role.lower() or "user",
                    m.content or "",
                    list(m.images or []),
                    {k: v for k, v in m.as_dict().items() if k not in ("role", "content")},
                )
                for m in req.messages or []
            ]
        else:
            messages = []
            if req.system:
                messages.append(ChatMessage("system", req.system))
            messages.append(ChatMessage("user", req.prompt or "", list(req.images or [])))
        out = Routed(
            str(req.model or ""),
            messages,
            stream=req.stream is not False,
            options=req.options,
            format=req.format,
            keep_alive=req.keep_alive,
            think=req.think,
            tools=list(req.tools or []),
        )
        if not self.chat and not req.prompt:
            # A load request: no image reaches the text model, even one nobody will look at.
            out.load = req.without_images()
        return out

    def error(self, status: int, message: str, param: str | None = None) -> Response:
        return error(status, message)

    def writer(self, req: Routed) -> NativeWriter:
        return NativeWriter(req.model, self.chat)


class NativeWriter:
    """Chunks and the final object of one answer, in the chat or the generate shape."""

    content_type = JSON_CT

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat

    def chunk(self, ev: Any) -> bytes | None:
        c: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if isinstance(ev, TextDelta):
            self._put(c, content=ev.text)
        elif isinstance(ev, (ThinkingDelta, Progress)):
            self._put(c, content="", thinking=ev.text)
        elif isinstance(ev, ToolCalls) and self.chat:
            self._put(c, content="", tool_calls=ev.calls)
        elif isinstance(ev, Final):
            self._put(c, content="")
            self._finish(c, ev)
            return line(c)
        else:
            return None
        c["done"] = False
        return line(c)

    def whole(self, events: list[Any]) -> dict[str, Any]:
        final = events[-1]
        assert isinstance(final, Final)
        calls = [c for ev in events if isinstance(ev, ToolCalls) for c in ev.calls]
        c: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        self._put(c, content=final.answer, thinking=final.thinking, tool_calls=calls if self.chat else None)
        self._finish(c, final)
        return c

    def stream_error(self, message: str, status: int) -> bytes:
        return line({"error": message})  # the Ollama way: a last {"error": ...} line

    def _put(self, c: dict[str, Any], content: str, thinking: str = "", tool_calls: Any = None) -> None:
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if tool_calls:
                msg["tool_calls"] = tool_calls
            c["message"] = msg
        else:
            c["response"] = content
            if thinking:
                c["thinking"] = thinking

    @staticmethod
    def _finish(c: dict[str, Any], final: Final) -> None:
        c["done"] = True
        c["done_reason"] = final.done_reason or "stop"
        for f in STAT_FIELDS:
            c[f] = int(final.stats.get(f, 0))


__all__ = ["JSON_CT", "NDJSON", "NativeCodec", "NativeWriter", "error", "line", "now_rfc3339"]

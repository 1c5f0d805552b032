"""A faithful fake Ollama for tests and benchmarks: a real HTTP server on 127.0.0.1.

It follows shared/ollama-contract.md: NDJSON streaming (``application/x-ndjson``) unless
``"stream": false``; one final ``done: true`` chunk with nanosecond stats; ``{"error": ...}`` bodies
with Ollama's statuses and messages; 404 ``model 'x' not found`` for unknown models; load requests
(no prompt / no messages) answer ``done_reason: "load"``. Replies are scripted per turn, and every
request body is recorded so tests can assert what the upstream saw (e.g. that no image reached it).

The reply source is pluggable: scripted :class:`Reply` objects, a :attr:`FakeOllama.responder`, or a
real model whose :class:`Reply` streams lazily (``Reply.stream``; see tests/real_ollama.py). The HTTP
surface is the same for all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from router.serve.local_server import LocalServer


@dataclass
class Reply:
    """One scripted LLM turn.

    ``content`` is streamed in ``chunks`` (explicit pieces) or cut every ``chunk_size`` characters.
    ``status`` != 200 answers ``{"error": error}`` with that status instead. ``cut_after`` closes the
    connection after that many chunks (a broken stream); ``delay_s`` waits before the first byte and
    ``chunk_delay_s`` between chunks. ``error_after`` sends a mid-stream ``{"error": ...}`` line.

    ``stream``: pieces produced lazily (a model generating): iterated off the event loop as they
    come, closed when the client leaves. Its producer may set ``prompt_eval_count``/``eval_count``
    and ``done_reason`` once it is exhausted; they replace the estimates in the final chunk.
    """

    content: str = ""
    chunks: list[str] | None = None
    chunk_size: int = 7
    tool_calls: list[dict[str, Any]] | None = None
    thinking: str = ""
    status: int = 200
    error: str = ""
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    cut_after: int | None = None
    error_after: int | None = None
    done_reason: str = "stop"
    stream: Iterable[str] | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        if not self.content:
            return []
        n = max(1, self.chunk_size)
        return [self.content[i : i + n] for i in range(0, len(self.content), n)]


@dataclass
class FakeModel:
    name: str
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    system: str = ""
    family: str = "qwen3"
    parameter_size: str = "4.0B"
    quantization_level: str = "Q4_K_M"
    projector_info: dict[str, Any] | None = None
    context_length: int = 262144


Responder = Callable[[str, dict[str, Any]], "Reply | str"]


def _norm(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class FakeOllama:
    """Start with ``with FakeOllama() as fake: ...``; ``fake.url`` is its base URL.

    Script replies with :meth:`script` (a queue consumed one per chat/generate turn) or set
    :attr:`responder` to compute a reply from the path and request body. With neither, it answers
    ``"ok"``.
    """

    def __init__(self, models: list[FakeModel] | None = None) -> None:
        self.models: dict[str, FakeModel] = {}
        for m in models or [FakeModel("qwen3-vision"), FakeModel("qwen3:4b-instruct-2507-q4_K_M")]:
            self.add_model(m)
        self.replies: deque[Reply] = deque()
        self.responder: Responder | None = None
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, json body or None)
        self.blobs: dict[str, bytes] = {}
        # Streams whose client went away before the last chunk (a proxy must cancel upstream work).
        self.streams_cancelled = 0
        self.streams_completed = 0
        self._lock = threading.Lock()
        self._server: LocalServer | None = None
        self.url = ""
        self.port = 0

    # --- scripting ----------------------------------------------------------------------------
    def add_model(self, model: FakeModel) -> None:
        self.models[_norm(model.name)] = model

    def script(self, *replies: Reply | str) -> None:
        for r in replies:
            self.replies.append(Reply(content=r) if isinstance(r, str) else r)

    def calls(self, path: str) -> list[dict[str, Any]]:
        """Bodies of the recorded requests to ``path`` (e.g. "/api/chat")."""
        with self._lock:
            return [b for _, p, b in self.requests if p == path]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.replies.clear()
        self.responder = None

    def _next_reply(self, path: str, body: dict[str, Any]) -> Reply:
        if self.replies:
            return self.replies.popleft()
        if self.responder is not None:
            r = self.responder(path, body)
            return Reply(content=r) if isinstance(r, str) else r
        return Reply(content="ok")

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, port: int = 0) -> FakeOllama:
        # Go's net/http (Ollama) keeps idle connections open; uvicorn's default closes them after 5 s.
        self._server = LocalServer(self.app(), port=port, lifespan="off", timeout_keep_alive=120).start()
        self.url, self.port = self._server.url, self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- the HTTP API -------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET", "HEAD"]),
            Route("/api/tags", self.tags, methods=["GET", "HEAD"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/create", self.create, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE"]),
            Route("/api/copy", self.copy, methods=["POST"]),
            Route("/api/blobs/{digest}", self.blob, methods=["HEAD", "POST"]),
            Route("/v1/models", self.v1_models, methods=["GET"]),
            Route("/v1/chat/completions", self.v1_chat, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _body(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        with self._lock:
            self.requests.append((request.method, request.url.path, None))
        if not raw:
            return None, JSONResponse({"error": "missing request body"}, status_code=400)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return None, JSONResponse({"error": f"invalid character: {exc.msg}"}, status_code=400)
        if not isinstance(body, dict):
            return None, JSONResponse({"error": "json: cannot unmarshal into Go value"}, status_code=400)
        with self._lock:
            self.requests[-1] = (request.method, request.url.path, body)
        return body, None

    def _model(self, body: dict[str, Any]) -> tuple[FakeModel | None, Response | None]:
        name = body.get("model") or body.get("name")
        if not name:
            return None, JSONResponse({"error": "model is required"}, status_code=400)
        m = self.models.get(_norm(name))
        if m is None:
            return None, JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        return m, None

    async def root(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, "/", None))
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "0.13.5"})

    async def tags(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, "/api/tags", None))
        models = []
        for name, m in self.models.items():
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2026-08-01T10:00:00Z",
                    "size": 2_497_293_931,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": self._details(m),
                    "capabilities": list(m.capabilities),
                }
            )
        return JSONResponse({"models": models})

    async def ps(self, request: Request) -> Response:
        return JSONResponse({"models": []})

    def _details(self, m: FakeModel) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": m.family,
            "families": [m.family],
            "parameter_size": m.parameter_size,
            "quantization_level": m.quantization_level,
        }

    async def show(self, request: Request) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        m, err = self._model(body)
        if err:
            return err
        out: dict[str, Any] = {
            "license": "Apache License 2.0",
            "modelfile": f"FROM {m.name}\n" + (f'SYSTEM """{m.system}"""\n' if m.system else ""),
            "parameters": "temperature 0.7\ntop_k 20\ntop_p 0.8",
            "template": "{{ .Prompt }}",
            "details": self._details(m),
            "model_info": {"general.architecture": m.family, f"{m.family}.context_length": m.context_length},
            "capabilities": list(m.capabilities),
            "modified_at": "2026-08-01T10:00:00Z",
        }
        if m.system:
            out["system"] = m.system
        if m.projector_info:
            out["projector_info"] = m.projector_info
        return JSONResponse(out)

    async def pull(self, request: Request) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        name = body.get("model") or body.get("name") or ""
        statuses = [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"}, {"status": "success"}]
        self.add_model(FakeModel(name))
        if body.get("stream") is False:
            return JSONResponse({"status": "success"})
        return StreamingResponse((json.dumps(s) + "\n" for s in statuses), media_type="application/x-ndjson")

    async def create(self, request: Request) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        self.add_model(FakeModel(body.get("model", ""), system=body.get("system", "")))
        return JSONResponse({"status": "success"})

    async def delete(self, request: Request) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        m, err = self._model(body)
        if err:
            return err
        self.models.pop(_norm(m.name), None)
        return Response(status_code=200)

    async def embed(self, request: Request) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        m, err = self._model(body)
        if err:
            return err
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        return JSONResponse(
            {
                "model": body["model"],
                "embeddings": [_hash_embedding(t) for t in inputs],
                "total_duration": 1_000_000,
                "load_duration": 0,
                "prompt_eval_count": len(inputs),
            }
        )

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def generate(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        m, err = self._model(body)
        if err:
            return err
        refused = _capability_error(m, body, chat)
        if refused:
            return JSONResponse({"error": refused}, status_code=400)
        empty = not body.get("messages") if chat else not body.get("prompt")
        if empty:  # a load (or, with keep_alive 0, an unload) request
            return JSONResponse(_load_reply(body, chat))
        reply = self._next_reply("/api/chat" if chat else "/api/generate", body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return JSONResponse({"error": reply.error or "internal error"}, status_code=reply.status)
        turn = _Turn(body, reply, chat)
        if body.get("stream", True) is False:
            try:
                pieces = await _all_pieces(reply)
            except Exception as exc:  # a model that failed: Ollama's 500 with the reason
                return JSONResponse({"error": str(exc) or type(exc).__name__}, status_code=500)
            for piece in pieces:
                turn.count(piece)
            text = "".join(pieces)
            return JSONResponse(turn.chunk(text, reply.thinking, reply.tool_calls, done=True))
        return StreamingResponse(self._stream(turn), media_type="application/x-ndjson")

    async def _stream(self, turn: _Turn) -> AsyncIterator[str]:
        reply, finished, i = turn.reply, False, -1
        try:
            if reply.thinking:
                yield json.dumps(turn.chunk("", thinking=reply.thinking)) + "\n"
            async for piece in _lazy_pieces(reply):
                i += 1
                turn.count(piece)
                if reply.cut_after is not None and i >= reply.cut_after:
                    finished = True
                    raise ConnectionResetError("scripted cut")  # uvicorn drops the connection
                if reply.error_after is not None and i >= reply.error_after:
                    finished = True
                    message = reply.error or "an error was encountered while running the model"
                    yield json.dumps({"error": message}) + "\n"
                    return
                if reply.chunk_delay_s and i:
                    await asyncio.sleep(reply.chunk_delay_s)
                yield json.dumps(turn.chunk(piece)) + "\n"
            if reply.tool_calls:
                yield json.dumps(turn.chunk("", tool_calls=reply.tool_calls)) + "\n"
            finished = True
            yield json.dumps(turn.chunk("", done=True)) + "\n"
        except _ModelFailed as exc:  # mid-stream: the status is already 200, so a final error line
            finished = True
            yield json.dumps({"error": str(exc)}) + "\n"
        finally:
            _close(reply)
            self._stream_ended(finished)

    def _stream_ended(self, finished: bool) -> None:
        with self._lock:
            if finished:
                self.streams_completed += 1
            else:
                self.streams_cancelled += 1

    # --- more management routes -----------------------------------------------------------------
    async def copy(self, request: Request) -> Response:
        body, err = await self._body(request)
        if err:
            return err
        src = self.models.get(_norm(str(body.get("source") or "")))
        if src is None:
            return JSONResponse({"error": f"model '{body.get('source')}' not found"}, status_code=404)
        dest = str(body.get("destination") or "")
        self.add_model(
            FakeModel(
                dest,
                list(src.capabilities),
                src.system,
                src.family,
                src.parameter_size,
                src.quantization_level,
                src.projector_info,
            )
        )
        return Response(status_code=200)

    async def blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        if request.method == "HEAD":
            with self._lock:
                self.requests.append(("HEAD", "/api/blobs", None))
            return Response(status_code=200 if digest in self.blobs else 404)
        data = await request.body()
        with self._lock:
            self.requests.append(("POST", "/api/blobs", {"digest": digest, "size": len(data)}))
        if digest != "sha256:" + hashlib.sha256(data).hexdigest():
            return JSONResponse({"error": "digest mismatch, file must be downloaded again"}, status_code=400)
        self.blobs[digest] = data
        return Response(status_code=201)

    # --- OpenAI compatibility (contract A.7) ----------------------------------------------------
    async def v1_models(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, "/v1/models", None))
        data = [{"id": name, "object": "model", "created": 1785578400, "owned_by": "library"} for name in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def v1_chat(self, request: Request) -> Response:
        raw = await request.body()
        with self._lock:
            self.requests.append((request.method, "/v1/chat/completions", None))
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return _oai_error(400, f"invalid request: {exc.msg}")
        with self._lock:
            self.requests[-1] = (request.method, "/v1/chat/completions", body)
        name = body.get("model")
        if not name:
            return _oai_error(400, "model is required")
        if _norm(name) not in self.models:
            return _oai_error(404, f"model '{name}' not found")
        reply = self._next_reply("/v1/chat/completions", body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return _oai_error(reply.status, reply.error or "internal error")
        cid = "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:6]
        created = int(time.time())
        calls = [
            {
                "id": f"call_{i}",
                "index": i,
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": json.dumps(c["function"].get("arguments", {})),
                },
            }
            for i, c in enumerate(reply.tool_calls or [])
        ]
        base = {"id": cid, "created": created, "model": name, "system_fingerprint": "fp_ollama"}
        if body.get("stream") is not True:
            try:
                pieces = await _all_pieces(reply)
            except Exception as exc:
                return _oai_error(500, str(exc) or type(exc).__name__)
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
            if calls:
                msg["tool_calls"] = calls
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": msg, "finish_reason": _finish(reply, calls)}],
                    "usage": _usage(reply, len(pieces)),
                }
            )
        return StreamingResponse(self._v1_stream(body, reply, base, calls), media_type="text/event-stream")

    async def _v1_stream(
        self, body: dict[str, Any], reply: Reply, base: dict[str, Any], calls: list[dict[str, Any]]
    ) -> AsyncIterator[str]:
        def sse(delta: dict[str, Any], finish_reason: str | None) -> str:
            obj = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(obj)}\n\n"

        n = 0
        try:
            async for piece in _lazy_pieces(reply):
                if reply.chunk_delay_s and n:
                    await asyncio.sleep(reply.chunk_delay_s)
                n += 1
                yield sse({"role": "assistant", "content": piece}, None)
        except _ModelFailed as exc:
            err = {"message": str(exc), "type": "api_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': err})}\n\n"
            return
        finally:
            _close(reply)
        if calls:
            yield sse({"role": "assistant", "content": "", "tool_calls": calls}, None)
        yield sse({"role": "assistant", "content": ""}, _finish(reply, calls))
        so = body.get("stream_options") or {}
        if so.get("include_usage"):
            last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(reply, n)}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"


def _finish(reply: Reply, calls: list[dict[str, Any]]) -> str:
    return "tool_calls" if calls else reply.done_reason


def _usage(reply: Reply, pieces: int) -> dict[str, int]:
    prompt = reply.prompt_eval_count if reply.prompt_eval_count is not None else 10
    out = reply.eval_count if reply.eval_count is not None else max(1, pieces)
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


class _ModelFailed(Exception):
    """A lazy reply's producer (a model) raised while streaming."""


_EXHAUSTED = object()


async def _lazy_pieces(reply: Reply) -> AsyncIterator[str]:
    """The reply's pieces; a lazy ``stream`` is advanced in a worker thread (a model generating must
    not block the event loop that serves the other routes)."""
    if reply.stream is None:
        for piece in reply.pieces():
            yield piece
        return
    it = iter(reply.stream)
    reply.stream = it  # so _close reaches the very iterator being advanced
    while True:
        try:
            piece = await anyio.to_thread.run_sync(next, it, _EXHAUSTED)
        except Exception as exc:
            raise _ModelFailed(str(exc) or type(exc).__name__) from exc
        if piece is _EXHAUSTED:
            return
        if piece:
            yield piece


async def _all_pieces(reply: Reply) -> list[str]:
    try:
        return [p async for p in _lazy_pieces(reply)]
    finally:
        _close(reply)


def _close(reply: Reply) -> None:
    """Stop a lazy producer (the client left, or it is done): a generator's ``finally`` runs."""
    close = getattr(reply.stream, "close", None)
    if close is not None:
        close()


def _oai_error(status: int, message: str) -> JSONResponse:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _hash_embedding(text: str, dim: int = 32) -> list[float]:
    """A deterministic bag-of-words embedding: texts sharing words are close."""
    vec = [0.0] * dim
    for word in text.lower().split():
        h = int(hashlib.sha256(word.encode()).hexdigest(), 16)
        vec[h % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def main(argv: list[str] | None = None) -> None:
    """Serve the fake in its own process (benchmarks: no GIL shared with the client under test).

    ``python -m tests.fake_ollama --port 0 --reply TEXT --chunk-size 8`` prints ``READY <url>`` once
    listening and serves until killed.
    """
    import argparse

    ap = argparse.ArgumentParser(description="a fake Ollama on 127.0.0.1")
    ap.add_argument("--reply", default="ok", help="the answer to every chat/generate turn")
    ap.add_argument("--chunk-size", type=int, default=8)
    args = ap.parse_args(argv)
    fake = FakeOllama()
    fake.responder = lambda path, body: Reply(args.reply, chunk_size=args.chunk_size)
    fake.start()
    print(f"READY {fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


def _capability_error(m: Any, body: dict[str, Any], chat: bool) -> str | None:
    """Ollama's 400 for a request the model cannot serve (server/images.go CheckCapabilities)."""
    if "completion" not in m.capabilities:
        return f'"{m.name}" does not support {"chat" if chat else "generate"}'
    if body.get("tools") and "tools" not in m.capabilities:
        return f'"{m.name}" does not support tools'
    if body.get("think") is True and "thinking" not in m.capabilities:
        return f'"{m.name}" does not support thinking'
    return None


def _load_reply(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    """The answer to a request with no prompt: a load, or with keep_alive 0 an unload."""
    reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
    obj: dict[str, Any] = {"model": body["model"], "created_at": _now(), "done": True, "done_reason": reason}
    if chat:
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    return obj


class _Turn:
    """One scripted reply as Ollama's chunks: the message (chat) or response (generate) shape, the final
    chunk's done_reason and nanosecond stats."""

    def __init__(self, body: dict[str, Any], reply: Any, chat: bool) -> None:
        self.model, self.reply, self.chat = body["model"], reply, chat
        if chat:
            self.prompt_chars = sum(len(str(x.get("content", ""))) for x in body.get("messages", []))
        else:
            self.prompt_chars = len(body.get("prompt", ""))
        self.n = 0  # pieces sent

    def count(self, text: str) -> None:
        self.n += 1

    def stats(self) -> dict[str, int]:
        """Nanosecond stats: the producer's token counts when it gave them, else estimates."""
        r, n = self.reply, self.n
        prompt = r.prompt_eval_count if r.prompt_eval_count is not None else max(1, math.ceil(self.prompt_chars / 4))
        out = r.eval_count if r.eval_count is not None else max(1, n)
        return {
            "total_duration": 5_000_000 + 1_000_000 * n,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 2_000_000,
            "eval_count": out,
            "eval_duration": 1_000_000 * max(1, n),
        }

    def chunk(self, text: str, thinking: str = "", tool_calls: Any = None, done: bool = False) -> dict[str, Any]:
        c: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            if tool_calls:
                msg["tool_calls"] = tool_calls
            c["message"] = msg
        else:
            c["response"] = text
            if thinking:
                c["thinking"] = thinking
        c["done"] = done
        if done:
            c["done_reason"] = self.reply.done_reason
            c.update(self.stats())
            if not self.chat:
                c["context"] = [1, 2, 3]
        return c


if __name__ == "__main__":
    main()

"""``vision-router serve``: an Ollama-compatible proxy that gives any Ollama client vision.

Point ``ollama run``, Open WebUI, ollama-python, LangChain's ChatOllama or an OpenAI client at it
instead of Ollama. For routed models (by default every model without native ``vision``):

- ``/api/show`` and ``/api/tags`` add ``vision`` (only ``vision``) to ``capabilities``, so clients
  attach images (ollama-contract.md B);
- ``POST /api/chat``, ``/api/generate`` and ``/v1/chat/completions`` carrying images go through the
  orchestrator: images are decoded once and taken off the messages, experts run, and the answer
  streams back in the route's own shape with exactly one terminal chunk. The upstream text model
  never receives image bytes.

Everything else (and every request without an image) is forwarded unchanged, streaming preserved,
status codes and bodies preserved. ``GET /_vision/health`` and ``GET /_vision/metrics`` report on
the proxy itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import ollama
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from experts.access import LIVENESS, UNAUTHORIZED, is_authorized
from experts.errors import ImageError, VisionRouterError
from experts.images import DecodedImage, decode_base64_image
from experts.registry import Registry, default_registry
from router import __version__
from router.core.config import Settings
from router.core.errors import UpstreamError
from router.core.ollama_host import resolve_host
from router.core.orchestrator import Final, Orchestrator, TextDelta, ThinkingDelta, ToolCalls
from router.serve import openai_compat as oai
from router.serve.guard import guarded_protocol
from router.serve.local_server import LocalServer
from router.serve.wire import BadRequest, NativeRequest, load_json, may_hold, validate

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # Ollama's own proxy caps request bodies at 64 MiB
NDJSON = "application/x-ndjson"
JSON_CT = "application/json; charset=utf-8"
# Requests that change nothing upstream: safe to resend once when a pooled connection turns out dead.
RETRY_SAFE = frozenset({"/api/chat", "/api/generate", "/api/show", "/api/embed", "/api/embeddings",
                        "/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
})
_MAY_HOLD_IMAGES = may_hold("image")  # "images" in any case or spelling Ollama accepts (wire.py)
_MAY_HOLD_IMAGE_URL = may_hold("image_url")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
STAT_FIELDS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
               "eval_duration")


@dataclass
class ProxyConfig:
    """How the proxy behaves (the orchestrator's own knobs live in :class:`router.core.config.Settings`)."""

    upstream: str = ""
    route: list[str] = field(default_factory=list)  # model patterns to route; [] = every non-vision model
    skip: list[str] = field(default_factory=list)  # model patterns never routed
    token: str | None = None  # bearer token required on every request but the health check
    max_body_bytes: int = DEFAULT_MAX_BODY
    connect_timeout_s: float = 10.0
    upstream_timeout_s: float = 600.0  # longest silence from Ollama mid-request (model loads are slow)
    show_ttl_s: float = 30.0
    upstream_pools: int = 8
    recent_traces: int = 20
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slowloris)
    body_timeout_s: float = 120.0  # ... and its body within this
    keep_alive_s: float = 5.0  # idle keep-alive connections close after this
    max_connections: int = 1024  # open client connections
    max_header_bytes: int = 64 * 1024
    max_concurrent: int = 512  # requests in flight; more get Ollama's 503 "server busy" (OLLAMA_MAX_QUEUE)


def server_options(cfg: ProxyConfig) -> dict[str, Any]:
    """uvicorn settings that enforce ``cfg``'s connection limits (pass to ``uvicorn.run``/``Config``)."""
    return {
        "http": guarded_protocol(cfg.header_timeout_s, cfg.max_connections, cfg.max_header_bytes),
        "timeout_keep_alive": cfg.keep_alive_s,
        "h11_max_incomplete_event_size": cfg.max_header_bytes,
    }


class BodyTooLarge(VisionRouterError):
    pass


class SlowBody(VisionRouterError):
    pass


class ClientGone(Exception):
    """The client hung up; the request's work was cancelled."""


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def norm_model(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _match(name: str, patterns: list[str]) -> bool:
    full = norm_model(name)
    return any(fnmatch.fnmatchcase(full, norm_model(p)) or fnmatch.fnmatchcase(name, p) for p in patterns)


# --- which models are routed ----------------------------------------------------------------------
class ModelRoutes:
    """Decides per model whether the proxy adds vision; capabilities come from upstream ``/api/show``
    (asked once per model, cached for ``ttl_s``, concurrent asks coalesced)."""

    def __init__(self, http: httpx.AsyncClient, cfg: ProxyConfig) -> None:
        self.http = http
        self.cfg = cfg
        self._caps: dict[str, tuple[float, ModelInfo]] = {}
        self._pending: dict[str, asyncio.Future[ModelInfo]] = {}

    def routed_by_caps(self, name: str, caps: list[str] | None) -> bool:
        if not name or caps is None:
            return False
        if self.cfg.skip and _match(name, self.cfg.skip):
            return False
        if self.cfg.route and not _match(name, self.cfg.route):
            return False
        # Embedding-only models cannot answer; models that already see need no help.
        return "vision" not in caps and ("completion" in caps or not caps)

    def remember(self, name: str, caps: list[str] | None, status: int = 200, error: str = "") -> None:
        self._caps[norm_model(name)] = (time.monotonic() + self.cfg.show_ttl_s, ModelInfo(caps, status, error))

    async def lookup(self, name: str) -> ModelInfo:
        """The model's upstream capabilities, or the status and error Ollama's ``/api/show`` gave."""
        key = norm_model(name)
        hit = self._caps.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        fut = self._pending.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._ask(name))
            self._pending[key] = fut
            fut.add_done_callback(lambda _f: self._pending.pop(key, None))
        return await asyncio.shield(fut)

    async def _ask(self, name: str) -> ModelInfo:
        r = await self.http.post("/api/show", json={"model": name})  # TransportError: the caller's 502
        caps: list[str] | None = None
        error = ""
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 200 and isinstance(data, dict):
            caps = list(data.get("capabilities") or [])
        elif isinstance(data, dict) and isinstance(data.get("error"), str):
            error = data["error"]
        else:
            error = r.text[:500] or f"HTTP {r.status_code}"
        info = ModelInfo(caps, r.status_code, error)
        if r.status_code < 500:  # 5xx may be transient: ask again next time
            self.remember(name, caps, r.status_code, error)
        return info


@dataclass(frozen=True)
class ModelInfo:
    """What upstream ``/api/show`` said about a model: capabilities, or an error with its status."""

    capabilities: list[str] | None
    status: int = 200
    error: str = ""


# --- metrics ----------------------------------------------------------------------------------------
class Metrics:
    """Counters for ``/_vision/metrics``."""

    def __init__(self, recent: int) -> None:
        self.started = time.time()
        self.requests: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.inflight = 0
        self.client_disconnects = 0
        self.upstream_errors = 0
        self.upstream_retries = 0
        self.stream_errors = 0
        self.experts: dict[str, dict[str, float]] = {}
        self.llm_turns = 0
        self.traces: deque[dict[str, Any]] = deque(maxlen=max(0, recent))

    def count(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1

    def status(self, code: int) -> None:
        k = str(code)
        self.statuses[k] = self.statuses.get(k, 0) + 1

    def final(self, route: str, final: Final) -> None:
        t = final.trace
        self.llm_turns += len(t.llm_calls)
        for e in t.experts:
            s = self.experts.setdefault(e.expert, {"runs": 0, "errors": 0, "cached": 0, "total_ms": 0.0,
                                                   "max_ms": 0.0})
            s["runs"] += 1
            s["errors"] += 1 if e.error else 0
            s["cached"] += 1 if e.cached else 0
            s["total_ms"] += e.timing_ms
            s["max_ms"] = max(s["max_ms"], e.timing_ms)
        if self.traces.maxlen:
            self.traces.append({"time": now_rfc3339(), "route": route, "model": final.model,
                                "trace": t.model_dump(mode="json")})

    def snapshot(self, cache: dict[str, Any]) -> dict[str, Any]:
        experts = {
            name: {**s, "total_ms": round(s["total_ms"], 2), "max_ms": round(s["max_ms"], 2),
                   "mean_ms": round(s["total_ms"] / s["runs"], 2) if s["runs"] else 0.0}
            for name, s in self.experts.items()
        }
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "inflight": self.inflight,
            "client_disconnects": self.client_disconnects,
            "upstream_errors": self.upstream_errors,
            "upstream_retries": self.upstream_retries,
            "stream_errors": self.stream_errors,
            "llm_turns": self.llm_turns,
            "experts": experts,
            "cache": cache,
            "recent_traces": list(self.traces),
        }


# --- the app ----------------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None,
    registry: Registry | None = None,
    upstream: str | None = None,
    *,
    config: ProxyConfig | None = None,
    orchestrator: Orchestrator | None = None,
) -> Starlette:
    """The proxy as an ASGI app. ``upstream`` (or ``config.upstream``) is Ollama's address, default
    ``settings.ollama_host`` / ``OLLAMA_HOST`` / 127.0.0.1:11434."""
    proxy = VisionProxy(settings, registry, upstream, config=config, orchestrator=orchestrator)
    return proxy.app


class VisionProxy:
    """The request handlers; :attr:`app` is the Starlette app."""

    def __init__(
        self,
        settings: Settings | None = None,
        registry: Registry | None = None,
        upstream: str | None = None,
        *,
        config: ProxyConfig | None = None,
        orchestrator: Orchestrator | None = None,
    ) -> None:
        cfg = config or ProxyConfig()
        settings = settings or Settings()
        base = resolve_host(upstream or cfg.upstream or settings.ollama_host)
        cfg.upstream = base
        self.cfg = cfg
        self.settings = settings.model_copy(update={"ollama_host": base})
        timeout = httpx.Timeout(cfg.upstream_timeout_s, connect=cfg.connect_timeout_s, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        # Several small connection pools rather than one big one: httpcore's pool does work
        # proportional to its size on every request, which turns quadratic under hundreds of streams.
        self._pool = [httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits, trust_env=False)
                      for _ in range(max(1, cfg.upstream_pools))]
        self._next_pool = 0
        self.http = self._pool[0]
        if orchestrator is None:
            client = ollama.AsyncClient(host=base, timeout=timeout, limits=limits, trust_env=False)
            orchestrator = Orchestrator(self.settings, client=client, registry=registry or default_registry())
        self.orch = orchestrator
        self.routes = ModelRoutes(self.http, cfg)
        self.metrics = Metrics(cfg.recent_traces)
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=ALL_METHODS)],
            middleware=[Middleware(_Inflight, metrics=self.metrics, cap=cfg.max_concurrent)],
            exception_handlers={Exception: self._crash},
            lifespan=self._lifespan,
        )
        self.app.state.proxy = self

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        for client in self._pool:
            await client.aclose()

    def _client(self) -> httpx.AsyncClient:
        self._next_pool = (self._next_pool + 1) % len(self._pool)
        return self._pool[self._next_pool]

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.exception("proxy error on %s %s", request.method, request.url.path)
        return _error(500, f"vision-router: {type(exc).__name__}: {exc}")

    # --- dispatch -------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.url.path
        method = request.method
        if not is_authorized(request.headers.get("authorization"), self.cfg.token):
            if path == "/_vision/health" and method == "GET":
                return JSONResponse(LIVENESS)  # a liveness probe learns that the process is up, nothing more
            self.metrics.status(401)
            return _error(401, UNAUTHORIZED)
        try:
            response = await self._route(request, method, path)
        except BodyTooLarge as exc:
            response = _error(413, str(exc))
        except SlowBody as exc:
            response = _error(408, str(exc))
        except ClientGone:
            self.metrics.client_disconnects += 1
            response = Response(status_code=499)
        self.metrics.status(response.status_code)
        return response

    async def _route(self, request: Request, method: str, path: str) -> Response:
        if method == "POST":
            if path == "/api/chat":
                return await self.native(request, chat=True)
            if path == "/api/generate":
                return await self.native(request, chat=False)
            if path == "/v1/chat/completions":
                return await self.openai_chat(request)
            if path == "/api/show":
                return await self.show(request)
        elif method in ("GET", "HEAD"):
            if path == "/_vision/health":
                return await self.health()
            if path == "/_vision/metrics":
                self.metrics.count("metrics")
                return JSONResponse(self.metrics.snapshot(self.orch.dispatcher.cache.stats.as_dict()))
            if path == "/api/tags" and method == "GET":
                return await self.rewrite_list(request, "models")
            if path == "/v1/models" and method == "GET":
                return await self.rewrite_list(request, "data")
        self.metrics.count("forward")
        body = await self._body(request)
        return await self.forward(request, body)

    # --- plumbing -------------------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body is {_mib(int(declared))}, over the {_mib(limit)} limit")
        chunks: list[bytes] = []

        async def read() -> None:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise BodyTooLarge(f"request body is over the {_mib(limit)} limit")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.cfg.body_timeout_s)
        except asyncio.TimeoutError:
            raise SlowBody(f"request body not received within {self.cfg.body_timeout_s:g} s") from None
        return b"".join(chunks)

    def _upstream_headers(self, request: Request) -> list[tuple[str, str]]:
        out = []
        for k, v in request.headers.items():
            lk = k.lower()
            if lk in HOP_BY_HOP or (lk == "authorization" and self.cfg.token):
                continue
            out.append((k, v))
        return out

    async def forward(self, request: Request, body: bytes | None, path: str | None = None) -> Response:
        """Send the request on to Ollama unchanged and stream its answer back unchanged."""
        url = _upstream_url(path or request.url.path, request)
        http = self._client()
        req = http.build_request(request.method, url, headers=self._upstream_headers(request), content=body or None)
        try:
            try:
                upstream = await http.send(req, stream=True)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                # A pooled keep-alive connection the upstream had just closed: nothing was answered,
                # so a request that changes nothing upstream is safe to send once more.
                if request.method not in ("GET", "HEAD") and (path or request.url.path) not in RETRY_SAFE:
                    raise
                self.metrics.upstream_retries += 1
                upstream = await http.send(req, stream=True)
        except httpx.TimeoutException:
            self.metrics.upstream_errors += 1
            return _error(504, f"Ollama at {self.cfg.upstream} timed out")
        except httpx.TransportError as exc:
            self.metrics.upstream_errors += 1
            return _error(502, f"cannot reach Ollama at {self.cfg.upstream}: {_reason(exc)}")
        ndjson = upstream.headers.get("content-type", "").startswith(NDJSON)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.HTTPError as exc:
                self.metrics.stream_errors += 1
                if ndjson:  # mid-stream failure: the Ollama way, a last {"error": ...} line
                    yield _line({"error": f"Ollama at {self.cfg.upstream}: stream broken: {_reason(exc)}"})
            finally:
                await upstream.aclose()

        response = StreamingResponse(relay(), status_code=upstream.status_code)
        response.raw_headers = [  # uvicorn adds its own date and server
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.multi_items()
            if (k.lower() not in HOP_BY_HOP and k.lower() not in ("date", "server"))
            or (k.lower() == "content-length" and not ndjson)
        ]
        return response

    async def _forward_json(self, request: Request, obj: dict[str, Any]) -> Response:
        return await self.forward(request, json.dumps(obj).encode())

    async def _is_routed(self, model: Any) -> bool:
        """Whether requests for ``model`` go through the experts. A model Ollama does not know (or
        cannot show) is answered with Ollama's own error, so no image is ever handed on for it."""
        if not isinstance(model, str) or not model:
            raise UpstreamError("model is required", 400)
        try:
            info = await self.routes.lookup(model)
            if info.capabilities is None:
                raise UpstreamError(info.error or f"model '{model}' not found", info.status)
            return self.routes.routed_by_caps(model, info.capabilities)
        except httpx.TimeoutException:
            raise UpstreamError(f"Ollama at {self.cfg.upstream} timed out", 504) from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"cannot reach Ollama at {self.cfg.upstream}: {_reason(exc)}", 502) from None

    async def _decode(self, raw_images: list[Any]) -> list[DecodedImage]:
        """Decode every image once, off the event loop."""
        limits = self.settings.image_limits()

        def work() -> list[DecodedImage]:
            out = []
            for i, raw in enumerate(raw_images, 1):
                if not isinstance(raw, str):
                    raise ImageError(f"image {i}: expected a base64 string, got {type(raw).__name__}")
                out.append(decode_base64_image(raw, index=i, **limits))
            return out

        return await asyncio.to_thread(work)

    # --- capability rewrite -----------------------------------------------------------------------
    async def show(self, request: Request) -> Response:
        self.metrics.count("show")
        body = await self._body(request)
        try:
            req = json.loads(body) if body else None
        except ValueError:
            req = None
        name = (req.get("model") or req.get("name")) if isinstance(req, dict) else None
        r = await self._fetch(request, body)
        if isinstance(r, Response):
            return r
        if r.status_code != 200 or not isinstance(name, str):
            return _copy(r)
        try:
            data = r.json()
        except ValueError:
            return _copy(r)
        caps = data.get("capabilities")
        if isinstance(caps, list):
            self.routes.remember(name, list(caps))
            if self.routes.routed_by_caps(name, caps):
                data["capabilities"] = [*caps, "vision"]
        return JSONResponse(data, status_code=200, headers=_passable(r.headers))

    async def rewrite_list(self, request: Request, key: str) -> Response:
        """``/api/tags`` (and ``/v1/models`` where it carries capabilities): add ``vision``."""
        self.metrics.count("tags" if key == "models" else "models")
        r = await self._fetch(request, None)
        if isinstance(r, Response):
            return r
        if r.status_code != 200:
            return _copy(r)
        try:
            data = r.json()
        except ValueError:
            return _copy(r)
        models = data.get(key) if isinstance(data, dict) else None
        if isinstance(models, list):
            for m in models:
                if not isinstance(m, dict) or not isinstance(m.get("capabilities"), list):
                    continue
                name = m.get("model") or m.get("name") or m.get("id") or ""
                caps = m["capabilities"]
                self.routes.remember(name, list(caps))
                if self.routes.routed_by_caps(name, caps):
                    m["capabilities"] = [*caps, "vision"]
        return JSONResponse(data, status_code=200, headers=_passable(r.headers))

    async def _fetch(self, request: Request, body: bytes | None) -> httpx.Response | Response:
        """A buffered upstream call for the routes whose answer the proxy edits."""
        req = self.http.build_request(request.method, _upstream_url(request.url.path, request),
                                      headers=self._upstream_headers(request), content=body or None)
        try:
            return await self.http.send(req)
        except httpx.TimeoutException:
            self.metrics.upstream_errors += 1
            return _error(504, f"Ollama at {self.cfg.upstream} timed out")
        except httpx.TransportError as exc:
            self.metrics.upstream_errors += 1
            return _error(502, f"cannot reach Ollama at {self.cfg.upstream}: {_reason(exc)}")

    # --- health -----------------------------------------------------------------------------------
    async def health(self) -> Response:
        self.metrics.count("health")
        upstream: dict[str, Any] = {"url": self.cfg.upstream}
        try:
            r = await self.http.get("/api/version", timeout=2.0)
            upstream["ok"] = r.status_code == 200
            if r.status_code == 200:
                upstream["version"] = r.json().get("version")
        except (httpx.HTTPError, ValueError) as exc:
            upstream["ok"] = False
            upstream["error"] = _reason(exc)
        return JSONResponse({
            "status": "ok" if upstream["ok"] else "degraded",
            "version": __version__,
            "upstream": upstream,
            "experts": self.orch.registry.names(),
            "protocol": self.settings.protocol,
        })

    # --- native chat / generate -------------------------------------------------------------------
    async def native(self, request: Request, chat: bool) -> Response:
        kind = "chat" if chat else "generate"
        body = await self._body(request)
        if not _MAY_HOLD_IMAGES.search(body):  # no image anywhere: pure pass-through, nothing parsed
            self.metrics.count(f"{kind}_passthrough")
            return await self.forward(request, body)
        try:
            parsed = validate(NativeRequest, load_json(body))
        except BadRequest as exc:
            return _error(400, str(exc))
        if not parsed.image_count():
            self.metrics.count(f"{kind}_passthrough")
            return await self.forward(request, body)
        try:
            routed = await self._is_routed(parsed.model)
        except UpstreamError as exc:
            return _error(exc.status, str(exc))
        if not routed:
            self.metrics.count(f"{kind}_passthrough")
            return await self.forward(request, body)
        if not chat and not parsed.prompt:
            # A load request: no image reaches the text model, even one nobody will look at.
            self.metrics.count(f"{kind}_passthrough")
            return await self._forward_json(request, parsed.without_images())

        self.metrics.count(f"{kind}_routed")
        req = parsed.model_dump(exclude_none=True)
        if chat:
            messages = [dict(m.as_dict(), images=m.images or []) for m in parsed.messages or []]
        else:
            messages = []
            if parsed.system:
                messages.append({"role": "system", "content": parsed.system})
            messages.append({"role": "user", "content": parsed.prompt or "", "images": parsed.images or []})
        raw_images = [img for m in messages for img in (m.get("images") or [])]
        try:
            decoded = await self._decode(raw_images)
        except ImageError as exc:
            return _error(400, str(exc))
        run = self._start_run(request, kind, messages, decoded, req)
        model = str(parsed.model)
        stream = parsed.stream is not False
        try:
            first = await run.first()
        except VisionRouterError as exc:
            return _error(getattr(exc, "status", 400), str(exc))
        if not stream:
            try:
                events = [first] + await run.rest()
            except VisionRouterError as exc:
                return _error(getattr(exc, "status", 500), str(exc))
            return JSONResponse(_native_object(model, chat, events), headers={"content-type": JSON_CT})
        return StreamingResponse(self._native_stream(run, first, model, chat), media_type=NDJSON,
                                 background=_Background(run.cancel))

    async def _native_stream(self, run: _RunTask, first: Any, model: str, chat: bool) -> AsyncIterator[bytes]:
        try:
            ev = first
            while ev is not None:
                piece = _native_chunk(model, chat, ev)
                if piece is not None:
                    yield piece
                if isinstance(ev, Final):
                    break
                ev = await run.next()
        except VisionRouterError as exc:
            self.metrics.stream_errors += 1
            yield _line({"error": str(exc)})
        finally:
            run.cancel()

    def _start_run(self, request: Request, kind: str, messages: list[dict[str, Any]], decoded: list[DecodedImage],
                   req: dict[str, Any], tools: list[dict[str, Any]] | None = None) -> _RunTask:
        if tools is None:
            tools = [t for t in req.get("tools") or [] if isinstance(t, dict)]
        agen = self.orch.stream(
            messages, model=str(req.get("model")), options=req.get("options"), format=req.get("format"),
            keep_alive=req.get("keep_alive"), think=req.get("think"), decoded=decoded, tools=tools or None,
        )
        return _RunTask(agen, request, lambda final: self.metrics.final(kind, final), self.metrics)

    # --- OpenAI ---------------------------------------------------------------------------------
    async def openai_chat(self, request: Request) -> Response:
        body = await self._body(request)
        if not _MAY_HOLD_IMAGE_URL.search(body):
            self.metrics.count("openai_passthrough")
            return await self.forward(request, body)
        try:
            native = oai.to_native(load_json(body))
        except BadRequest as exc:
            return _oai_error(400, str(exc), exc.param)
        except oai.OpenAIRequestError as exc:
            return _oai_error(400, str(exc), exc.param)
        if not native.image_count:
            self.metrics.count("openai_passthrough")
            return await self.forward(request, body)
        try:
            routed = await self._is_routed(native.model)
        except UpstreamError as exc:
            return _oai_error(exc.status, str(exc))
        if not routed:
            self.metrics.count("openai_passthrough")
            return await self.forward(request, body)
        self.metrics.count("openai_routed")
        raw_images = [img for m in native.messages for img in (m.get("images") or [])]
        try:
            decoded = await self._decode(raw_images)
        except ImageError as exc:
            return _oai_error(400, str(exc))
        run_req = {"model": native.model, "options": native.options or None, "format": native.format,
                   "think": native.think}
        run = self._start_run(request, "openai", native.messages, decoded, run_req, tools=native.tools)
        try:
            first = await run.first()
        except VisionRouterError as exc:
            return _oai_error(getattr(exc, "status", 400), str(exc))
        if not native.stream:
            try:
                events = [first] + await run.rest()
            except VisionRouterError as exc:
                return _oai_error(getattr(exc, "status", 500), str(exc))
            final = events[-1]
            assert isinstance(final, Final)
            return JSONResponse(oai.completion(native.model, final.answer, final.thinking, final.tool_calls,
                                               final.done_reason, final.stats))
        return StreamingResponse(self._openai_stream(run, first, native), media_type="text/event-stream",
                                 background=_Background(run.cancel))

    async def _openai_stream(self, run: _RunTask, first: Any, native: oai.NativeChat) -> AsyncIterator[bytes]:
        w = oai.ChunkWriter(native.model)
        had_calls = False
        try:
            ev = first
            while ev is not None:
                if isinstance(ev, TextDelta):
                    yield w.content(ev.text)
                elif isinstance(ev, ThinkingDelta):
                    yield w.reasoning(ev.text)
                elif isinstance(ev, ToolCalls):
                    had_calls = True
                    yield w.tool_calls(ev.calls)
                elif isinstance(ev, Final):
                    yield w.finish(oai.finish_reason(ev.done_reason, had_calls or bool(ev.tool_calls)))
                    if native.include_usage:
                        yield w.usage(ev.stats)
                    yield oai.DONE
                    break
                ev = await run.next()
        except VisionRouterError as exc:
            self.metrics.stream_errors += 1
            yield oai.sse(oai.error_body(str(exc), getattr(exc, "status", 500)))
        finally:
            run.cancel()


class _Inflight:
    """Counts requests from their first byte to their response's last (streams included) and answers
    Ollama's own 503 beyond ``cap`` (its OLLAMA_MAX_QUEUE); the health probe is always answered."""

    def __init__(self, app: Any, metrics: Metrics, cap: int) -> None:
        self.app = app
        self.metrics = metrics
        self.cap = cap

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        if m.inflight >= self.cap and scope["path"] != "/_vision/health":
            m.status(503)
            busy = _error(503, "server busy, please try again.  maximum pending requests exceeded")
            await busy(scope, receive, send)
            return
        m.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            m.inflight -= 1


# --- one orchestrated request, as a task ---------------------------------------------------------------
class _RunTask:
    """Runs the orchestrator's generator in its own task, feeding a small queue.

    The response reads the queue; a client that hangs up cancels the task, which closes the upstream
    stream (the model stops generating for nobody)."""

    _END = object()

    def __init__(self, agen: Any, request: Request, on_final: Any, metrics: Metrics) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self.request = request
        self.on_final = on_final
        self.metrics = metrics
        self.task = asyncio.ensure_future(self._pump(agen))

    async def _pump(self, agen: Any) -> None:
        try:
            async for ev in agen:
                if isinstance(ev, Final):
                    self.on_final(ev)
                await self.queue.put(ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # delivered to the reader
            await self.queue.put(_Failure(exc))
        finally:
            await agen.aclose()
        await self.queue.put(self._END)

    async def next(self) -> Any:
        item = await self.queue.get()
        if item is self._END:
            return None
        if isinstance(item, _Failure):
            raise _as_router_error(item.exc)
        return item

    async def first(self) -> Any:
        """The first event, or :class:`ClientGone` when the client leaves before it (nothing is
        written until then, so an early error can still get its proper status)."""
        return await _unless_disconnected(self.request, self.next(), self.cancel)

    async def rest(self) -> list[Any]:
        async def collect() -> list[Any]:
            out = []
            while True:
                ev = await self.next()
                if ev is None:
                    return out
                out.append(ev)
                if isinstance(ev, Final):
                    return out

        return await _unless_disconnected(self.request, collect(), self.cancel)

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()


@dataclass
class _Failure:
    exc: BaseException


class _Background:
    """A Starlette background callable that runs a sync function."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def __call__(self) -> None:
        self.fn()


async def _unless_disconnected(request: Request, aw: Awaitable[Any], on_gone: Any) -> Any:
    task = asyncio.ensure_future(aw)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        on_gone()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    on_gone()
    raise ClientGone()


def _as_router_error(exc: BaseException) -> VisionRouterError:
    if isinstance(exc, VisionRouterError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"Ollama timed out: {exc}", 504)
    if isinstance(exc, httpx.HTTPError):
        return UpstreamError(f"Ollama: {_reason(exc)}", 502)
    return UpstreamError(f"vision-router: {type(exc).__name__}: {exc}", 500)


# --- response shapes --------------------------------------------------------------------------------
def _native_chunk(model: str, chat: bool, ev: Any) -> bytes | None:
    c: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if isinstance(ev, TextDelta):
        _put(c, chat, content=ev.text)
    elif isinstance(ev, ThinkingDelta):
        _put(c, chat, content="", thinking=ev.text)
    elif isinstance(ev, ToolCalls):
        if not chat:
            return None
        _put(c, chat, content="", tool_calls=ev.calls)
    elif isinstance(ev, Final):
        _put(c, chat, content="")
        c["done"] = True
        c["done_reason"] = ev.done_reason or "stop"
        for f in STAT_FIELDS:
            c[f] = int(ev.stats.get(f, 0))
        return _line(c)
    else:
        return None
    c["done"] = False
    return _line(c)


def _put(c: dict[str, Any], chat: bool, content: str, thinking: str = "", tool_calls: Any = None) -> None:
    if chat:
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


def _native_object(model: str, chat: bool, events: list[Any]) -> dict[str, Any]:
    final = events[-1]
    assert isinstance(final, Final)
    calls = [c for ev in events if isinstance(ev, ToolCalls) for c in ev.calls]
    c: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    _put(c, chat, content=final.answer, thinking=final.thinking, tool_calls=calls if chat else None)
    c["done"] = True
    c["done_reason"] = final.done_reason or "stop"
    for f in STAT_FIELDS:
        c[f] = int(final.stats.get(f, 0))
    return c


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _error(status: int, message: str) -> Response:
    """Ollama's error shape (never ``{"detail": ...}``)."""
    return JSONResponse({"error": message}, status_code=status)


def _oai_error(status: int, message: str, param: str | None = None) -> Response:
    return JSONResponse(oai.error_body(message, status, param), status_code=status)


def _copy(r: httpx.Response) -> Response:
    return Response(r.content, status_code=r.status_code, headers=_passable(r.headers))


def _passable(headers: httpx.Headers) -> dict[str, str]:
    # uvicorn writes its own date and server: Ollama's would make two of each
    return {k: v for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in ("content-encoding", "date", "server")}


def _upstream_url(path: str, request: Request) -> httpx.URL:
    """The upstream URL: the client's query only when it sent one (never a bare ``?``)."""
    query = request.url.query
    return httpx.URL(path, query=query.encode()) if query else httpx.URL(path)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n % (1024 * 1024) == 0 else f"{n / (1024 * 1024):.1f} MiB"


# --- running it ------------------------------------------------------------------------------------
class ProxyServer(LocalServer):
    """The proxy on a real socket in a background thread (tests, benchmarks, notebooks)::

        with ProxyServer(create_app(settings, upstream=url)) as proxy:
            ollama.Client(host=proxy.url).chat(...)
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        proxy = getattr(app.state, "proxy", None)
        limits = server_options(proxy.cfg) if proxy is not None else {}
        super().__init__(app, host, port, lifespan="on", backlog=4096, **limits)


__all__ = ["ProxyConfig", "ProxyServer", "VisionProxy", "create_app", "server_options"]

"""``vision-router serve``: an Ollama-compatible proxy that gives any Ollama client vision.

Point ``ollama run``, Open WebUI, ollama-python, LangChain's ChatOllama or an OpenAI client at it
instead of Ollama. For routed models (by default every model without native ``vision``):

- ``/api/show`` and ``/api/tags`` add ``vision`` (only ``vision``) to ``capabilities``, so clients
  attach images (ollama-contract.md B);
- ``POST /api/chat``, ``/api/generate`` and ``/v1/chat/completions`` carrying images go through one
  request pipeline (:mod:`router.serve.pipeline`) with the route's codec (:mod:`router.serve.codecs`):
  images are decoded once, in their messages, experts run, and the answer streams back in the route's
  own shape with exactly one terminal chunk. The upstream text model never receives image bytes.

Everything else (and every request without an image) is forwarded unchanged, streaming preserved,
status codes and bodies preserved. ``GET /_vision/health`` and ``GET /_vision/metrics`` report on
the proxy itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from experts.access import LIVENESS, UNAUTHORIZED, is_authorized
from experts.errors import VisionRouterError
from experts.registry import Registry, default_registry
from router import __version__
from router.core.config import Settings
from router.core.errors import UpstreamError
from router.core.ollama_host import resolve_host
from router.core.orchestrator import Orchestrator
from router.serve.codecs.native import NDJSON, NativeCodec, error, line
from router.serve.codecs.openai import OpenAICodec
from router.serve.errors import UNREACHABLE_HINT, upstream_failure
from router.serve.guard import guard_options
from router.serve.local_server import LocalServer
from router.serve.metrics import Metrics
from router.serve.pipeline import ClientGone, Pipeline
from router.serve.routing import ModelRoutes, path_problem

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # Ollama's own proxy caps request bodies at 64 MiB
SHOW_FANOUT = 8  # /api/show calls at once when a listing has no capabilities to read
# Requests that change nothing upstream: safe to resend once when a pooled connection turns out dead.
RETRY_SAFE = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/show",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CODECS = {
    "/api/chat": NativeCodec(chat=True),
    "/api/generate": NativeCodec(chat=False),
    "/v1/chat/completions": OpenAICodec(),
}


@dataclass
class ProxyConfig:
    """How the proxy behaves (the orchestrator's own knobs live in :class:`router.core.config.Settings`)."""

    upstream: str = ""
    route: list[str] = field(default_factory=list)  # model patterns to route; [] = every non-vision model
    skip: list[str] = field(default_factory=list)  # model patterns never routed
    token: str | None = None  # bearer token required on every request (a bare liveness probe excepted)
    max_body_bytes: int = DEFAULT_MAX_BODY
    connect_timeout_s: float = 10.0
    upstream_timeout_s: float = 600.0  # longest silence from Ollama mid-request (model loads are slow)
    upstream_pools: int = 8
    recent_traces: int = 20
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slowloris)
    body_timeout_s: float = 120.0  # ... and its body within this
    keep_alive_s: float = 5.0  # idle keep-alive connections close after this
    max_connections: int = 1024  # open client connections
    max_header_bytes: int = 64 * 1024
    max_concurrent: int = 512  # requests in flight; more get Ollama's 503 "server busy" (OLLAMA_MAX_QUEUE)
    progress: bool = False  # streaming clients see which experts are looking, in the `thinking` field
    findings: bool = False  # end routed answers with one line of what the experts found


def server_options(cfg: ProxyConfig) -> dict[str, Any]:
    """uvicorn settings that enforce ``cfg``'s connection limits (pass to ``uvicorn.run``/``Config``)."""
    return guard_options(cfg.header_timeout_s, cfg.max_connections, cfg.max_header_bytes, cfg.keep_alive_s)


class BodyTooLarge(VisionRouterError):
    status = 413


class SlowBody(VisionRouterError):
    status = 408


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
    """Routes requests: the image-carrying routes to the pipeline, the capability lists to the rewrite,
    everything else to Ollama unchanged; :attr:`app` is the Starlette app."""

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
        self._pool = [
            httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits, trust_env=False)
            for _ in range(max(1, cfg.upstream_pools))
        ]
        self._next_pool = 0
        self.http = self._pool[0]
        if orchestrator is None:
            client = ollama.AsyncClient(host=base, timeout=timeout, limits=limits, trust_env=False)
            orchestrator = Orchestrator(self.settings, client=client, registry=registry or default_registry())
        self.orch = orchestrator
        orchestrator.upstream.unreachable = UNREACHABLE_HINT  # the operator's flag is --upstream here
        self.routes = ModelRoutes(orchestrator, cfg.route, cfg.skip)
        self.metrics = Metrics(cfg.recent_traces)
        self.pipeline = Pipeline(self)
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=ALL_METHODS)],
            middleware=[Middleware(_Inflight, metrics=self.metrics, cap=cfg.max_concurrent)],
            exception_handlers={Exception: self._crash},
            lifespan=self._lifespan,
        )
        self.app.state.proxy = self

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.orch.preload()  # the semantic router loads beside the server's start, not on the first request
        yield
        for client in self._pool:
            await client.aclose()

    def _client(self) -> httpx.AsyncClient:
        self._next_pool = (self._next_pool + 1) % len(self._pool)
        return self._pool[self._next_pool]

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.exception("proxy error on %s %s", request.method, request.url.path)
        return error(500, f"vision-router: internal error ({type(exc).__name__}); see the server log")

    # --- dispatch -------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.url.path
        method = request.method
        if not is_authorized(request.headers.get("authorization"), self.cfg.token):
            if path == "/_vision/health" and method == "GET":
                return JSONResponse(LIVENESS)  # a liveness probe learns that the process is up, nothing more
            self.metrics.status(401)
            return error(401, UNAUTHORIZED)
        problem = path_problem(path, request.scope.get("raw_path"))
        if problem is not None:  # routed on one path, forwarded to another: refused, nothing is read
            self.metrics.status(400)
            shown = path if len(path) <= 80 else path[:77] + "..."
            return error(400, f"non-canonical request path {shown!r}: {problem}; send the plain path")
        try:
            response = await self._route(request, method, path)
        except (BodyTooLarge, SlowBody) as exc:
            response = error(exc.status, str(exc))
        except ClientGone:
            self.metrics.client_disconnects += 1
            response = Response(status_code=499)
        self.metrics.status(response.status_code)
        return response

    async def _route(self, request: Request, method: str, path: str) -> Response:
        if method == "POST":
            codec = CODECS.get(path)
            if codec is not None:
                return await self.pipeline.handle(request, codec)
            if path == "/api/show":
                return await self.show(request)
        elif method in ("GET", "HEAD"):
            if path == "/_vision/health":
                return await self.health(request.query_params.get("refresh") not in (None, "", "0", "false"))
            if path == "/_vision/metrics":
                self.metrics.count("metrics")
                return JSONResponse(self.metrics.snapshot(self.orch.dispatcher.cache.stats.as_dict()))
            if path == "/api/tags" and method == "GET":
                return await self.rewrite_list(request, "models")
            if path == "/v1/models" and method == "GET":
                return await self.rewrite_list(request, "data")
        self.metrics.count("forward")
        body = await self.read_body(request)
        return await self.forward(request, body)

    # --- plumbing -------------------------------------------------------------------------------
    async def read_body(self, request: Request) -> bytes:
        """The whole request body, within the size limit and the body deadline."""
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

    def _upstream_failure(self, exc: BaseException) -> Response:
        self.metrics.upstream_errors += 1
        err = upstream_failure(exc, self.cfg.upstream)
        return error(err.status, str(err))

    async def forward(self, request: Request, body: bytes | None) -> Response:
        """Send the request on to Ollama unchanged and stream its answer back unchanged."""
        path = request.url.path
        http = self._client()
        req = http.build_request(
            request.method, _upstream_url(path, request), headers=self._upstream_headers(request), content=body or None
        )
        try:
            try:
                upstream = await http.send(req, stream=True)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                # A pooled keep-alive connection the upstream had just closed: nothing was answered,
                # so a request that changes nothing upstream is safe to send once more.
                if request.method not in ("GET", "HEAD") and path not in RETRY_SAFE:
                    raise
                self.metrics.upstream_retries += 1
                upstream = await http.send(req, stream=True)
        except httpx.TransportError as exc:
            return self._upstream_failure(exc)
        ndjson = upstream.headers.get("content-type", "").startswith(NDJSON)
        response = StreamingResponse(self._relay(upstream, ndjson), status_code=upstream.status_code)
        response.raw_headers = [  # uvicorn adds its own date and server
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.multi_items()
            if (k.lower() not in HOP_BY_HOP and k.lower() not in ("date", "server"))
            or (k.lower() == "content-length" and not ndjson)
        ]
        return response

    async def _relay(self, upstream: httpx.Response, ndjson: bool) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            self.metrics.stream_errors += 1
            if ndjson:  # mid-stream failure: the Ollama way, a last {"error": ...} line
                yield line({"error": str(upstream_failure(exc, self.cfg.upstream))})
        finally:
            await upstream.aclose()

    # --- capability rewrite -----------------------------------------------------------------------
    async def show(self, request: Request) -> Response:
        self.metrics.count("show")
        body = await self.read_body(request)
        try:
            req = json.loads(body) if body else None
        except (ValueError, RecursionError):
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
        caps = data.get("capabilities") if isinstance(data, dict) else None
        if isinstance(caps, list) and self.routes.routed_by_caps(name, caps):
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
        listed = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
        for m in listed:
            if isinstance(m.get("capabilities"), list):
                name = m.get("model") or m.get("name") or m.get("id") or ""
                if self.routes.routed_by_caps(name, m["capabilities"]):
                    m["capabilities"] = [*m["capabilities"], "vision"]
                    if isinstance(m.get("digest"), str):
                        m["digest"] = routed_digest(m["digest"])
        await self._digests_from_show([m for m in listed if not isinstance(m.get("capabilities"), list)])
        return JSONResponse(data, status_code=200, headers=_passable(r.headers))

    async def _digests_from_show(self, models: list[dict[str, Any]]) -> None:
        """Ollama servers from before ``/api/tags`` carried ``capabilities`` list name, digest and details
        only: ask ``/api/show`` (the shared cache, a few at a time) whether each is routed, so a routed model
        gets a digest of its own whichever Ollama is behind the proxy."""
        gate = asyncio.Semaphore(SHOW_FANOUT)

        async def one(m: dict[str, Any]) -> None:
            name, digest = m.get("model") or m.get("name"), m.get("digest")
            if not isinstance(name, str) or not isinstance(digest, str) or not self.routes.routed_by_caps(name, []):
                return  # nothing to rename, or excluded by --route / --skip without asking
            async with gate:
                try:
                    routed = await self.routes.is_routed(name)
                except UpstreamError:
                    return  # a model Ollama will not show keeps its listing as it is
            if routed:
                m["digest"] = routed_digest(digest)

        await asyncio.gather(*(one(m) for m in models))

    async def _fetch(self, request: Request, body: bytes | None) -> httpx.Response | Response:
        """A buffered upstream call for the routes whose answer the proxy edits."""
        req = self.http.build_request(
            request.method,
            _upstream_url(request.url.path, request),
            headers=self._upstream_headers(request),
            content=body or None,
        )
        try:
            return await self.http.send(req)
        except httpx.TransportError as exc:
            return self._upstream_failure(exc)

    # --- health -----------------------------------------------------------------------------------
    async def health(self, refresh: bool = False) -> Response:
        """The proxy, Ollama and the experts: those that can run, and why any other cannot. ``refresh``
        (``?refresh=1``) checks every expert again (weights fetched since, a service back up)."""
        self.metrics.count("health")
        registry = self.orch.registry
        # Off the event loop: a refresh asks remote expert services, and a status may read the disk.
        availability = await asyncio.to_thread(registry.refresh_availability if refresh else registry.availability)
        upstream: dict[str, Any] = {"url": self.cfg.upstream}
        try:
            r = await self.http.get("/api/version", timeout=2.0)
            upstream["ok"] = r.status_code == 200
            if r.status_code == 200:
                upstream["version"] = r.json().get("version")
        except (httpx.HTTPError, ValueError) as exc:
            upstream["ok"] = False
            upstream["error"] = str(upstream_failure(exc, self.cfg.upstream))
        return JSONResponse(
            {
                "status": "ok" if upstream["ok"] else "degraded",
                "version": __version__,
                "upstream": upstream,
                "experts": [n for n, why in availability.items() if why is None],
                "unavailable": {n: why for n, why in availability.items() if why is not None},
                "protocol": self.settings.protocol,
            }
        )


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
            busy = error(503, "server busy, please try again.  maximum pending requests exceeded")
            await busy(scope, receive, send)
            return
        m.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            m.inflight -= 1


def routed_digest(digest: str) -> str:
    """The digest a routed model is listed under: the model seen through the proxy has other capabilities
    than the same model seen directly, and clients that cache capabilities by digest (llm-ollama) must not
    reuse what they learnt from Ollama itself. Stable, and in Ollama's form (64 hex digits, or sha256:...)."""
    import hashlib

    prefix = "sha256:" if digest.startswith("sha256:") else ""
    return prefix + hashlib.sha256(f"{digest}+vision-router".encode()).hexdigest()


def _copy(r: httpx.Response) -> Response:
    return Response(r.content, status_code=r.status_code, headers=_passable(r.headers))


def _passable(headers: httpx.Headers) -> dict[str, str]:
    # uvicorn writes its own date and server: Ollama's would make two of each
    return {
        k: v
        for k, v in headers.items()
        if k.lower() not in HOP_BY_HOP and k.lower() not in ("content-encoding", "date", "server")
    }


def _upstream_url(path: str, request: Request) -> httpx.URL:
    """The upstream URL: the client's query only when it sent one (never a bare ``?``)."""
    query = request.url.query
    return httpx.URL(path, query=query.encode()) if query else httpx.URL(path)


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

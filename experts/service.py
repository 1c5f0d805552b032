"""Run one expert as its own HTTP service, so a big model lives in its own process (or machine)
and the router calls it by URL (see :mod:`experts.remote`).

Routes:

- ``POST /v1/analyze``: JSON ``{"image": "<base64>", "args": {...}}``, or a multipart form with an
  ``image`` file and an optional ``args`` JSON field (needs ``python-multipart``) → the
  :class:`~experts.schema.ExpertResult` as JSON. Errors are ``{"error": "<one line>", "type": ...}``:
  400 for a bad image or bad arguments, 401 without the token, 413 for a body over the limit, 500
  when the expert fails.
- ``GET /v1/info``: name, aliases, description, args schema, engine, model, device.
- ``GET /healthz``: ``{"status": "ok", "expert": NAME}`` once the model is loaded (it loads before the
  port opens); with a token set, a caller without it learns only ``{"status": "ok"}``.

Run it with ``vision-router expert serve NAME`` or ``python -m experts.service NAME``. It binds
127.0.0.1; another address needs ``--allow-remote`` (and should get a ``--token``, sent by clients as
``Authorization: Bearer <token>``). Bodies are counted while they stream in and cut at
``--max-body-mib``; arguments are bounded. Stateless: run replicas behind any load balancer.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from experts.access import LIVENESS, UNAUTHORIZED, check_bind_host, is_authorized, is_loopback_host
from experts.base import Expert
from experts.cancel import Cancelled, StopSignal, run_cancellable
from experts.errors import ExpertError, ImageError, VisionRouterError
from experts.images import base64_bytes, decoded
from experts.install import install_hint
from experts.registry import Registry, default_registry
from experts.schema import ExpertResult

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8790
DEFAULT_MAX_BODY_MIB = 64
MAX_ARGS_BYTES = 16 * 1024  # JSON of an expert's arguments: a few short strings and numbers
MAX_ERROR_CHARS = 1000  # an error line never carries a whole argument or document back
SERVE_EXTRA_HINT = install_hint("serve")


class BodyTooLarge(VisionRouterError):
    """The request body is over the limit (answered with 413)."""


class Unauthorized(VisionRouterError):
    """The request lacks the token (answered with 401)."""


def require_serve_extra() -> None:
    """Raise one line naming the extra when Starlette or uvicorn is missing."""
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise VisionRouterError(f"expert serve needs {' and '.join(missing)} (the [serve] extra): {SERVE_EXTRA_HINT}")


class LocalWorker:
    """Where a service's analyses run: here, the expert loaded in this process, in a worker thread. (A Ray
    Serve deployment puts its replicas behind the same app: :class:`experts.ray_service.ReplicaWorker`.)"""

    def __init__(self, expert: Expert) -> None:
        self.expert = expert

    @property
    def ready(self) -> bool:
        """Whether analyses can run (``/healthz``): the model is loaded."""
        return self.expert.loaded

    async def info(self) -> dict[str, Any]:
        """What ``GET /v1/info`` answers."""
        return service_info(self.expert)

    async def analyze(self, raw: bytes, args: dict[str, Any], stop: StopSignal) -> ExpertResult:
        """One analysis; once ``stop`` is set it stops at its next step (:class:`Cancelled`)."""
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(run_cancellable, stop, analyze_bytes, self.expert, raw, args)


def create_app(
    expert: Expert,
    *,
    max_concurrency: int = 1,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_MIB * 1024 * 1024,
    worker: Any = None,
) -> Any:
    """A Starlette app serving ``expert``. ``max_concurrency`` bounds simultaneous analyses (one
    model on one device rarely gains from more; requests queue instead). With ``token``, /v1/* need
    ``Authorization: Bearer <token>``. Bodies over ``max_body_bytes`` get 413 without being read.
    ``worker`` runs the analyses (default :class:`LocalWorker`: ``expert`` itself); arguments are checked
    against ``expert`` here, before any work."""
    require_serve_extra()
    worker = worker or LocalWorker(expert)
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    gate = asyncio.Semaphore(max(1, max_concurrency))

    def authorized(request: Request) -> bool:
        return is_authorized(request.headers.get("authorization"), token)

    async def analyze(request: Request) -> JSONResponse:
        if not authorized(request):
            return error_response(401, UNAUTHORIZED, "Unauthorized")
        try:
            raw, args = await _read_request(request, max_body_bytes)
            expert.parse_args(args)
        except BodyTooLarge as exc:
            return error_response(413, exc)
        except (ImageError, ExpertError) as exc:
            return error_response(400, exc)
        try:
            result = await _analyze_unless_client_leaves(request, gate, worker, raw, args)
        except Cancelled as exc:  # the client left (a router gave up): nobody reads this answer
            return error_response(499, exc)
        except ImageError as exc:
            return error_response(400, exc)
        except VisionRouterError as exc:
            return error_response(500, exc)
        except Exception as exc:  # an expert bug: one line to the caller, the traceback to our log
            log.exception("%s failed", expert.name)
            return error_response(500, f"{type(exc).__name__}: {one_line(exc)}")
        return JSONResponse(result.model_dump(mode="json"))

    async def info(request: Request) -> JSONResponse:
        if not authorized(request):
            return error_response(401, UNAUTHORIZED, "Unauthorized")
        return JSONResponse(await worker.info())

    async def healthz(request: Request) -> JSONResponse:
        ok = worker.ready
        status = 200 if ok else 503
        if not authorized(request):  # a liveness probe without the token learns only that it is up
            return JSONResponse(LIVENESS if ok else {"status": "loading"}, status_code=status)
        return JSONResponse({"status": "ok" if ok else "loading", "expert": expert.name}, status_code=status)

    return Starlette(
        routes=[
            Route("/v1/analyze", analyze, methods=["POST"]),
            Route("/v1/info", info, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def error_response(status: int, exc: BaseException | str, kind: str | None = None) -> Any:
    """The JSON error answer: ``{"error": "<one line, bounded>", "type": ...}``."""
    from starlette.responses import JSONResponse

    message = one_line(exc)
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    name = kind or (type(exc).__name__ if isinstance(exc, BaseException) else "ExpertError")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "type": name}, status_code=status, headers=headers)


async def _analyze_unless_client_leaves(
    request: Any, gate: asyncio.Semaphore, worker: Any, raw: bytes, args: dict[str, Any]
) -> Any:
    """Wait for a turn at the gate, then analyse; should the client leave first (a router that gave up
    closes its connection), a run still waiting is dropped and a running one is told to stop
    (:mod:`experts.cancel`: it raises :class:`Cancelled` at its next step), so no work outlives its asker."""
    stop = StopSignal()
    gone = asyncio.ensure_future(_client_left(request))
    try:
        turn = asyncio.ensure_future(gate.acquire())
        await asyncio.wait({turn, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not turn.done():
            turn.cancel()
            raise Cancelled("cancelled: the client left before the analysis started")
        try:
            work = asyncio.ensure_future(worker.analyze(raw, args, stop))
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                stop.set()
                log.info("the client left: its analysis stops at its next step")
            return await work
        finally:
            gate.release()
    except asyncio.CancelledError:  # Ray Serve cancels a request whose client left
        stop.set()
        raise
    finally:
        gone.cancel()


async def _client_left(request: Any) -> None:
    """Return once the client has closed its connection (the body is read by now, so the next ASGI message
    is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def analyze_bytes(expert: Expert, raw: bytes, args: dict[str, Any]) -> Any:
    """Decode ``raw`` and analyse it (the work of one request, in a worker thread)."""
    # Decode and analysis both hold the image's pixels in the process budget, and free them after.
    with decoded(raw, source="image") as image:
        return expert.analyze(image, args)


def service_info(expert: Expert) -> dict[str, Any]:
    """What ``GET /v1/info`` answers: the expert's own info plus engine, model and device."""
    out = expert.info()
    try:
        status = expert.status()
    except Exception as exc:  # info must answer even when status is broken
        status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out.update(
        {
            "engine": status.get("engine"),
            "model": status.get("model"),
            "device": status.get("device"),
            "loaded": expert.loaded,
            "status": status,
        }
    )
    return out


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, counted while it streams in: past ``limit`` bytes reading stops with
    :class:`BodyTooLarge` (a declared Content-Length over the limit is refused before reading)."""
    too_big = BodyTooLarge(f"request body is over the {limit / (1024 * 1024):g} MiB limit (--max-body-mib)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_request(request: Any, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The image bytes and the arguments of one analyze request."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request

    body = await _read_body(request, limit)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        replayed = Request(request.scope, _replay(body))
        del body
        try:
            form = await replayed.form()
        except AssertionError:  # Starlette's way of saying python-multipart is missing
            raise ExpertError("multipart uploads need python-multipart on the service; send JSON") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ImageError("multipart form has no 'image' file")
        data = await upload.read()
        args = _bounded_args(_json_object(form.get("args") or "{}", "args"))
        await form.close()
        return data, args
    return await run_in_threadpool(_parse_json_request, body)


def _parse_json_request(body: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise ExpertError('request body is not JSON: send {"image": "<base64>", "args": {...}}') from None
    del body
    if not isinstance(parsed, dict) or not isinstance(parsed.get("image"), str):
        raise ImageError('request needs "image": a base64 string')
    args = parsed.get("args") or {}
    if not isinstance(args, dict):
        raise ExpertError('"args" must be a JSON object')
    return base64_bytes(parsed.pop("image")), _bounded_args(args)


def _bounded_args(args: dict[str, Any]) -> dict[str, Any]:
    """Refuse oversized arguments by their size alone, without naming or echoing them."""
    size = len(json.dumps(args, ensure_ascii=False).encode("utf-8"))
    if size > MAX_ARGS_BYTES:
        raise ExpertError(f'"args" are {size / 1024:.0f} KiB of JSON, over the {MAX_ARGS_BYTES // 1024} KiB limit')
    return args


def _replay(body: bytes) -> Any:
    """An ASGI ``receive`` that hands over an already read body once."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _json_object(text: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise ExpertError(f"{what!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ExpertError(f"{what!r} must be a JSON object")
    return value


def one_line(exc: BaseException | str) -> str:
    """An error as one line (for ``{"error": ...}`` bodies)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def import_expert_modules(modules: Iterable[str], registry: Registry) -> None:
    """Import modules (dotted names or ``.py`` paths) that provide experts. A module with a
    ``register(register)`` function is handed ``registry.register``, like an entry point."""
    for spec in modules:
        if spec.endswith(".py"):
            path = Path(spec).expanduser()
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ExpertError(f"cannot import {spec}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[path.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
        hook = getattr(module, "register", None)
        if callable(hook):
            hook(registry.register)


def build_expert(name: str, config: dict[str, Any] | None = None, registry: Registry | None = None) -> Expert:
    """The local expert instance a service runs (never a remote proxy: a ``url`` setting is ignored)."""
    from experts.remote import RemoteExpert

    reg = registry or default_registry()
    cls = reg.expert_class(name)
    if issubclass(cls, RemoteExpert):
        raise ExpertError(f"{name}: only a remote service is registered here; install its extra to serve it")
    cfg = {k: v for k, v in (config or {}).items() if k != "url"}
    return cls(**cfg)


def serve_expert(
    name: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: dict[str, Any] | None = None,
    *,
    imports: Iterable[str] = (),
    max_concurrency: int = 1,
    log_level: str = "warning",
    registry: Registry | None = None,
    allow_remote: bool = False,
    token: str | None = None,
    max_body_mib: int = DEFAULT_MAX_BODY_MIB,
) -> None:
    """Check the address, load expert ``name`` (progress on stderr), then serve it until interrupted.
    Raises :class:`~experts.errors.VisionRouterError` (one line) when it cannot: the [serve] extra
    missing, a non-loopback ``host`` without ``allow_remote``, an expert that cannot load."""
    require_serve_extra()
    check_bind_host(host, allow_remote)
    if not token and not is_loopback_host(host):
        say("warning: listening beyond loopback without --token: anyone who can reach it can use it")
    import uvicorn

    reg = registry or default_registry()
    import_expert_modules(imports, reg)
    expert = build_expert(name, config, reg)
    # Bound before the (maybe long) load: a busy port says so at once, and the address printed is the
    # one bound (port 0 picks a free one).
    sock, url = listen(host, port)
    status = expert.status()
    what = ", ".join(f"{k} {status[k]}" for k in ("engine", "model", "device") if status.get(k))
    say(f"loading expert {expert.name}" + (f" ({what})" if what else "") + " ...")
    t0 = time.perf_counter()
    expert.load()
    device = expert.status().get("device")
    say(f"loaded {expert.name} in {time.perf_counter() - t0:.1f} s" + (f" on {device}" if device else ""))
    sock.listen(2048)  # listening before the address is printed: a client that reads it can connect at once
    say(
        f"serving {expert.name} on {url} (POST /v1/analyze, GET /v1/info, GET /healthz)"
        + (", token required" if token else "")
    )
    app = create_app(
        expert, max_concurrency=max_concurrency, token=token or None, max_body_bytes=max_body_mib * 1024 * 1024
    )
    from experts.http_guard import guard_options  # imports uvicorn: the [serve] extra

    # The proxy's connection guards: headers within 10 s (slowloris), bounded connections and headers.
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, **guard_options())).run(sockets=[sock])


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A TCP socket bound to ``host:port`` and its ``http://`` URL with the port actually bound.
    Raises :class:`VisionRouterError` (one line) when the address cannot be bound."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        raise VisionRouterError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    shown = f"[{bare}]" if family == socket.AF_INET6 else bare
    return sock, f"http://{shown}:{sock.getsockname()[1]}"


def say(msg: str) -> None:
    """A progress or address line on stderr, as ``vision-router: ...``."""
    print(f"vision-router: {msg}", file=sys.stderr, flush=True)

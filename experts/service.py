"""Run one expert as its own HTTP service, so a big model lives in its own process (or machine)
and the router calls it by URL (see :mod:`experts.remote`).

Routes:

- ``POST /v1/analyze``: JSON ``{"image": "<base64>", "args": {...}}``, or a multipart form with an
  ``image`` file and an optional ``args`` JSON field (needs ``python-multipart``) → the
  :class:`~experts.schema.ExpertResult` as JSON. Errors are ``{"error": "<one line>", "type": ...}``:
  400 for a bad image or bad arguments, 500 when the expert fails.
- ``GET /v1/info``: name, aliases, description, args schema, engine, model, device.
- ``GET /healthz``: ``{"status": "ok"}`` once the model is loaded (it loads before the port opens).

Run it with ``vision-router expert serve NAME`` or ``python -m experts.service NAME``; it binds
127.0.0.1 unless told otherwise. Stateless: run replicas behind any load balancer.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from experts.base import Expert
from experts.errors import ExpertError, ImageError, VisionRouterError
from experts.images import DecodedImage, decode_base64_image, decode_image
from experts.registry import Registry, default_registry

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8790


def create_app(expert: Expert, *, max_concurrency: int = 1) -> Any:
    """A Starlette app serving ``expert``. ``max_concurrency`` bounds simultaneous analyses (one
    model on one device rarely gains from more; requests queue instead)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    gate = asyncio.Semaphore(max(1, max_concurrency))

    def error(status: int, exc: BaseException | str) -> JSONResponse:
        if isinstance(exc, str):
            return JSONResponse({"error": exc, "type": "ExpertError"}, status_code=status)
        return JSONResponse({"error": _one_line(exc), "type": type(exc).__name__}, status_code=status)

    async def analyze(request: Request) -> JSONResponse:
        try:
            image, args = await _read_request(request)
        except (ImageError, ExpertError) as exc:
            return error(400, exc)
        try:
            expert.parse_args(args)
        except ExpertError as exc:
            return error(400, exc)
        async with gate:
            try:
                result = await run_in_threadpool(expert.analyze, image, args)
            except VisionRouterError as exc:
                return error(500, exc)
            except Exception as exc:  # an expert bug: one line to the caller, the traceback to our log
                log.exception("%s failed", expert.name)
                return error(500, f"{type(exc).__name__}: {_one_line(exc)}")
        return JSONResponse(result.model_dump(mode="json"))

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(service_info(expert))

    async def healthz(request: Request) -> JSONResponse:
        ok = expert.loaded
        return JSONResponse({"status": "ok" if ok else "loading", "expert": expert.name},
                            status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/v1/analyze", analyze, methods=["POST"]),
            Route("/v1/info", info, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def service_info(expert: Expert) -> dict[str, Any]:
    """What ``GET /v1/info`` answers: the expert's own info plus engine, model and device."""
    out = expert.info()
    try:
        status = expert.status()
    except Exception as exc:  # info must answer even when status is broken
        status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out.update({
        "engine": status.get("engine"),
        "model": status.get("model"),
        "device": status.get("device"),
        "loaded": expert.loaded,
        "status": status,
    })
    return out


async def _read_request(request: Any) -> tuple[DecodedImage, dict[str, Any]]:
    from starlette.concurrency import run_in_threadpool

    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form()
        except AssertionError:  # Starlette's way of saying python-multipart is missing
            raise ExpertError("multipart uploads need python-multipart on the service; send JSON") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ImageError("multipart form has no 'image' file")
        data = await upload.read()
        args = _json_object(form.get("args") or "{}", "args")
        return await run_in_threadpool(decode_image, data, source="image"), args
    try:
        body = await request.json()
    except Exception:
        raise ExpertError("request body is not JSON: send {\"image\": \"<base64>\", \"args\": {...}}") from None
    if not isinstance(body, dict) or not isinstance(body.get("image"), str):
        raise ImageError("request needs \"image\": a base64 string")
    args = body.get("args") or {}
    if not isinstance(args, dict):
        raise ExpertError("\"args\" must be a JSON object")
    return await run_in_threadpool(decode_base64_image, body["image"]), args


def _json_object(text: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise ExpertError(f"{what!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ExpertError(f"{what!r} must be a JSON object")
    return value


def _one_line(exc: BaseException | str) -> str:
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
) -> None:
    """Load expert ``name`` (progress on stderr), then serve it until interrupted. Raises
    :class:`~experts.errors.VisionRouterError` (one line) when it cannot load."""
    import uvicorn

    reg = registry or default_registry()
    import_expert_modules(imports, reg)
    expert = build_expert(name, config, reg)
    status = expert.status()
    what = ", ".join(f"{k} {status[k]}" for k in ("engine", "model", "device") if status.get(k))
    _say(f"loading expert {expert.name}" + (f" ({what})" if what else "") + " ...")
    t0 = time.perf_counter()
    expert.load()
    device = expert.status().get("device")
    _say(f"loaded {expert.name} in {time.perf_counter() - t0:.1f} s" + (f" on {device}" if device else ""))
    _say(f"serving {expert.name} on http://{host}:{port} (POST /v1/analyze, GET /v1/info, GET /healthz)")
    app = create_app(expert, max_concurrency=max_concurrency)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _say(msg: str) -> None:
    print(f"vision-router: {msg}", file=sys.stderr, flush=True)


def _parse_config(items: Iterable[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--config")
        try:
            value: Any = json.loads(raw)  # numbers, true/false, lists; anything else stays a string
        except ValueError:
            value = raw
        config[key.strip()] = value
    return config


@click.command("serve")
@click.argument("name")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port to listen on.")
@click.option("-c", "--config", "config_items", multiple=True, metavar="KEY=VALUE",
              help="Expert setting, e.g. -c model=ViT-B-16 -c device=cuda (repeatable).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import a module (or .py file) that registers extra experts (repeatable).")
@click.option("--max-concurrency", type=int, default=1, show_default=True,
              help="Analyses run at once; more requests wait.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_command(name, host, port, config_items, imports, max_concurrency, log_level):
    """Serve expert NAME over HTTP (POST /v1/analyze, GET /v1/info, GET /healthz)."""
    try:
        serve_expert(name, host, port, _parse_config(config_items), imports=imports,
                     max_concurrency=max_concurrency, log_level=log_level)
    except VisionRouterError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    serve_command()

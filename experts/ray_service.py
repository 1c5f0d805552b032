"""One expert as a Ray Serve deployment: replicas, autoscaling, the same HTTP API as :mod:`experts.service`.

``vision-router expert serve NAME --ray`` (:func:`serve_expert_on_ray`) puts the replicas behind the very
listener of ``vision-router expert serve``: the same Starlette app (``POST /v1/analyze``, ``GET /v1/info``,
``GET /healthz``: token, body cap, argument checks) on the same guarded uvicorn (request headers within
10 s, bounded header size and connections: :mod:`experts.http_guard`), which hands each analysis to a
replica through a deployment handle. Ray's own HTTP proxy is not started: it has no header deadline or
connection cap. A client that leaves cancels its replica call, and the replica stops the analysis at its
next step. A router reaches it with the same ``[experts.NAME] url = "http://HOST:PORT"`` setting::

    # from Python, on a running cluster (or a new local one)
    from experts.ray_service import serve_expert_on_ray
    serve_expert_on_ray("ocr", port=8790, min_replicas=1, max_replicas=8, num_cpus=1)

With Ray's own CLI, through the application builder, the app runs inside each replica behind Ray's HTTP
proxy instead (token, body cap and argument checks as above; the proxy's connection handling is Ray's, so
put it behind ``expert serve --ray`` or a reverse proxy that bounds slow clients where they can reach it)::

    serve run experts.ray_service:app_builder name=ocr max_replicas=8 num_cpus=1
    serve run experts.ray_service:app_builder name=clip num_gpus=1 config='{"device": "cuda"}'

Replicas scale between ``min_replicas`` and ``max_replicas`` on the number of requests waiting per replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from ray import serve

from experts.cancel import Cancelled, StopSignal, run_cancellable
from experts.errors import EngineMissing, ExpertError, ImageError, VisionRouterError
from experts.registry import default_registry
from experts.schema import ExpertResult
from experts.service import (
    analyze_bytes,
    build_expert,
    create_app,
    import_expert_modules,
    listen,
    one_line,
    require_serve_extra,
    say,
    service_info,
)

log = logging.getLogger(__name__)
# The error classes a replica's reply names, raised again at the listener (answered with the same statuses).
_KINDS: dict[str, type[VisionRouterError]] = {
    c.__name__: c for c in (EngineMissing, ExpertError, ImageError, Cancelled)
}


@serve.ingress()
class ExpertDeployment:
    """A replica: the expert loaded once, behind the app of :func:`experts.service.create_app`."""

    def __init__(
        self,
        name: str,
        config: dict[str, Any] | None = None,
        imports: Iterable[str] = (),
        max_concurrency: int = 1,
        token: str | None = None,
        max_body_mib: int = 64,
    ) -> None:
        registry = default_registry()
        import_expert_modules(imports, registry)
        self.expert = build_expert(name, config, registry)
        self.expert.load()  # before the replica takes requests: the first one is not a cold start
        self.max_concurrency = max_concurrency
        self.token, self.max_body_mib = token, max_body_mib

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(
            self.expert,
            max_concurrency=self.max_concurrency,
            token=self.token,
            max_body_bytes=self.max_body_mib * 1024 * 1024,
        )


class ExpertReplica:
    """A replica behind :func:`serve_expert_on_ray`'s listener: the expert loaded once; analyses at most
    ``max_concurrency`` at a time, each stopped at its next step when its call is cancelled."""

    def __init__(
        self, name: str, config: dict[str, Any] | None = None, imports: Iterable[str] = (), max_concurrency: int = 1
    ) -> None:
        registry = default_registry()
        import_expert_modules(imports, registry)
        self.expert = build_expert(name, config, registry)
        self.expert.load()  # before the replica takes requests: the first one is not a cold start
        self.max_concurrency = max(1, max_concurrency)
        self._gate: asyncio.Semaphore | None = None

    async def analyze(self, raw: bytes, args: dict[str, Any]) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": "<one line>", "type": ...}``: what the listener answers with."""
        if self._gate is None:  # made in the replica's own event loop
            self._gate = asyncio.Semaphore(self.max_concurrency)
        stop = StopSignal()
        try:
            async with self._gate:
                result = await asyncio.to_thread(run_cancellable, stop, analyze_bytes, self.expert, raw, args)
        except asyncio.CancelledError:  # the listener's client left: the thread stops at its next step
            stop.set()
            raise
        except VisionRouterError as exc:
            return {"error": one_line(exc), "type": type(exc).__name__}
        except Exception as exc:  # an expert bug: one line to the caller, the traceback to the replica's log
            log.exception("%s failed", self.expert.name)
            return {"error": f"{type(exc).__name__}: {one_line(exc)}", "type": "ExpertError"}
        return {"result": result.model_dump(mode="json")}

    def info(self) -> dict[str, Any]:
        return service_info(self.expert)


class ReplicaWorker:
    """The listener's side of :class:`ExpertReplica`: each analysis a call through the deployment handle,
    cancelled when the client leaves (see :class:`experts.service.LocalWorker`)."""

    ready = True  # the replicas loaded their expert before serve.run returned

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._info: dict[str, Any] | None = None

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = await self.handle.info.remote()
        return self._info

    async def analyze(self, raw: bytes, args: dict[str, Any], stop: StopSignal) -> ExpertResult:
        from ray.serve.exceptions import RequestCancelledError

        response = self.handle.analyze.remote(raw, args)
        forget = stop.add_callback(response.cancel)
        try:
            reply = await response
        except RequestCancelledError:
            raise Cancelled("cancelled: the client left, the replica stopped its analysis") from None
        finally:
            forget()
        if "error" in reply:
            raise _KINDS.get(reply.get("type", ""), ExpertError)(reply["error"])
        return ExpertResult.model_validate(reply["result"])


def deployment(
    name: str,
    config: dict[str, Any] | None = None,
    *,
    imports: Iterable[str] = (),
    min_replicas: int = 1,
    max_replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_concurrency: int = 1,
    token: str | None = None,
    max_body_mib: int = 64,
    ingress: bool = True,
) -> Any:
    """The bound Ray Serve application for expert ``name`` (give it to ``serve.run``): with ``ingress``, each
    replica serves the HTTP app behind Ray's proxy (``serve run``); without, replicas for
    :func:`serve_expert_on_ray`'s own listener, reached by handle."""
    autoscaling = None
    if max_replicas > min_replicas:
        autoscaling = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max(1, max_concurrency),
        }
    options: dict[str, Any] = {
        "name": f"expert-{name}",
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Requests beyond what the replicas run at once wait in Serve's queue, as in `expert serve`.
        "max_ongoing_requests": max(1, max_concurrency) * 4,
    }
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = min_replicas
    if not ingress:
        return serve.deployment(ExpertReplica, **options).bind(name, dict(config or {}), list(imports), max_concurrency)
    return serve.deployment(ExpertDeployment, **options).bind(
        name, dict(config or {}), list(imports), max_concurrency, token, max_body_mib
    )


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run experts.ray_service:app_builder name=NAME [max_replicas=N num_cpus=X num_gpus=Y
    config='{"k": "v"}']``."""
    known = {"name", "config", "imports", "min_replicas", "max_replicas", "num_cpus", "num_gpus", "max_concurrency"}
    unknown = set(args) - known
    if unknown or "name" not in args:
        raise ValueError(
            f"app_builder takes name=NAME and {', '.join(sorted(known - {'name'}))}; got {', '.join(sorted(args))}"
        )
    return deployment(
        args["name"],
        json.loads(args.get("config") or "{}"),
        imports=[m for m in (args.get("imports") or "").split(",") if m],
        min_replicas=int(args.get("min_replicas", 1)),
        max_replicas=int(args.get("max_replicas", 1)),
        num_cpus=float(args.get("num_cpus", 1)),
        num_gpus=float(args.get("num_gpus", 0)),
        max_concurrency=int(args.get("max_concurrency", 1)),
    )


class RayExpertService:
    """A running :func:`serve_expert_on_ray` (``blocking=False``): its ``url``, the deployment's ``handle``,
    and :meth:`stop`, which closes the listener (the deployment stays until ``serve.shutdown()``)."""

    def __init__(self, url: str, handle: Any, server: Any, thread: threading.Thread) -> None:
        self.url, self.handle, self._server, self._thread = url, handle, server, thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def serve_expert_on_ray(
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8790,
    address: str | None = None,
    config: dict[str, Any] | None = None,
    imports: Iterable[str] = (),
    min_replicas: int = 1,
    max_replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_concurrency: int = 1,
    blocking: bool = True,
    token: str | None = None,
    max_body_mib: int = 64,
    allow_remote: bool = False,
) -> Any:
    """Deploy expert ``name`` on Ray Serve (joining ``address``, or starting a local Ray) behind the listener
    of ``expert serve`` at ``http://host:port`` (port 0 picks a free one), and, with ``blocking``, serve until
    interrupted. Without ``blocking``, returns a :class:`RayExpertService` serving in a thread."""
    import ray
    import uvicorn

    from experts.access import check_bind_host
    from experts.http_guard import guard_options

    check_bind_host(host, allow_remote)  # the same rule as `expert serve` and `serve`
    require_serve_extra()
    registry = default_registry()
    import_expert_modules(imports, registry)
    expert = build_expert(name, config, registry)  # checks arguments at the door; the model loads in the replicas
    sock, url = listen(host, port)  # bound first: a busy port is one line, and the address printed is the one bound
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")  # the listener below is the way in, with expert serve's guards
    bound = deployment(
        name,
        config,
        imports=imports,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_concurrency=max_concurrency,
        ingress=False,
    )
    handle = serve.run(bound, name=f"expert-{name}", route_prefix=None)
    app = create_app(
        expert,
        # Each replica runs max_concurrency at a time; the rest wait here, where a client leaving drops them.
        max_concurrency=max(1, max_concurrency) * max(min_replicas, max_replicas),
        token=token or None,
        max_body_bytes=max_body_mib * 1024 * 1024,
        worker=ReplicaWorker(handle),
    )
    sock.listen(2048)
    say(f"serving {expert.name} on {url} from Ray Serve (POST /v1/analyze, GET /v1/info, GET /healthz)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **guard_options()))
    if blocking:
        server.run(sockets=[sock])
        return handle
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"expert-{name}-ray", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.02)
    return RayExpertService(url, handle, server, thread)

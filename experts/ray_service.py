"""One expert as a Ray Serve deployment: replicas, autoscaling, the same HTTP API as :mod:`experts.service`.

Each replica loads the expert once and serves the very Starlette app of ``vision-router expert serve``
(``POST /v1/analyze``, ``GET /v1/info``, ``GET /healthz``), so a router reaches it with the same
``[experts.NAME] url = "http://HOST:PORT"`` setting::

    # from Python, on a running cluster (or a new local one)
    from experts.ray_service import serve_expert_on_ray
    serve_expert_on_ray("ocr", port=8790, min_replicas=1, max_replicas=8, num_cpus=1)

    # or with Ray's own CLI, through the application builder
    serve run experts.ray_service:app_builder name=ocr max_replicas=8 num_cpus=1
    serve run experts.ray_service:app_builder name=clip num_gpus=1 config='{"device": "cuda"}'

Ray Serve's proxy listens on 127.0.0.1:8000 unless told otherwise (``--port`` here, or
``serve start --http-host 0.0.0.0`` on a cluster). Replicas scale between ``min_replicas`` and
``max_replicas`` on the number of requests waiting per replica.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ray import serve

from experts.registry import default_registry
from experts.service import build_expert, create_app, import_expert_modules


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
) -> Any:
    """The bound Ray Serve application for expert ``name`` (give it to ``serve.run``)."""
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
    """Deploy expert ``name`` on Ray Serve at ``http://host:port`` (joining ``address``, or starting a
    local Ray) and, with ``blocking``, serve until interrupted. Returns the deployment's handle."""
    import ray

    from experts.access import check_bind_host

    check_bind_host(host, allow_remote)  # the same rule as `expert serve` and `serve`
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    app = deployment(
        name,
        config,
        imports=imports,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_concurrency=max_concurrency,
        token=token,
        max_body_mib=max_body_mib,
    )
    return serve.run(app, name=f"expert-{name}", route_prefix="/", blocking=blocking)

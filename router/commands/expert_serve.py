"""`vision-router expert serve NAME`: one expert as an HTTP service, or as a Ray Serve deployment."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click

from experts.errors import VisionRouterError
from experts.install import install_hint

# The service's defaults (experts/service.py), repeated here so `--help` imports no web framework.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8790
DEFAULT_MAX_BODY_MIB = 64


def parse_config(items: Iterable[str]) -> dict[str, Any]:
    """``-c KEY=VALUE`` settings; values are JSON where they parse (numbers, booleans, lists), else strings."""
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
@click.option(
    "--host", default=DEFAULT_HOST, show_default=True, help="Address to bind (loopback unless --allow-remote)."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port (0 picks a free one)."
)
@click.option("--allow-remote", is_flag=True, help="Allow listening on a non-loopback address.")
@click.option(
    "--token",
    envvar="VISION_ROUTER_TOKEN",
    help="Require `Authorization: Bearer TOKEN` on /v1/* (env VISION_ROUTER_TOKEN).",
)
@click.option(
    "--max-body-mib",
    type=click.IntRange(1, 4096),
    default=DEFAULT_MAX_BODY_MIB,
    show_default=True,
    help="Largest request body accepted (base64 makes an image a third bigger).",
)
@click.option(
    "-c",
    "--config",
    "config_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Expert setting, e.g. -c model=ViT-B-16 -c device=cuda (repeatable).",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import a module (or .py file) that registers extra experts (repeatable).",
)
@click.option(
    "--max-concurrency", type=int, default=1, show_default=True, help="Analyses run at once; more requests wait."
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[ADDRESS]",
    help="Serve as a Ray Serve deployment (replicas, autoscaling) on the Ray cluster at ADDRESS "
    "(default: auto, i.e. a running cluster or a local one). Needs the [ray] extra.",
)
@click.option("--min-replicas", type=click.IntRange(1), default=1, show_default=True, help="With --ray.")
@click.option("--max-replicas", type=click.IntRange(1), default=None, help="With --ray: autoscale up to N.")
@click.option("--num-cpus", type=click.FloatRange(0), default=1.0, show_default=True, help="With --ray: per replica.")
@click.option("--num-gpus", type=click.FloatRange(0), default=0.0, show_default=True, help="With --ray: per replica.")
def serve_command(
    name,
    host,
    port,
    allow_remote,
    token,
    max_body_mib,
    config_items,
    imports,
    max_concurrency,
    log_level,
    ray_address,
    min_replicas,
    max_replicas,
    num_cpus,
    num_gpus,
):
    """Serve expert NAME over HTTP (POST /v1/analyze, GET /v1/info, GET /healthz)."""
    try:
        if ray_address:
            _serve_on_ray(
                name,
                host,
                port,
                ray_address,
                parse_config(config_items),
                imports=imports,
                min_replicas=min_replicas,
                max_replicas=max(max_replicas or min_replicas, min_replicas),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                max_concurrency=max_concurrency,
                token=token,
                max_body_mib=max_body_mib,
                allow_remote=allow_remote,
            )
            return
        from experts.service import serve_expert

        serve_expert(
            name,
            host,
            port,
            parse_config(config_items),
            imports=imports,
            max_concurrency=max_concurrency,
            log_level=log_level,
            allow_remote=allow_remote,
            token=token,
            max_body_mib=max_body_mib,
        )
    except VisionRouterError as exc:
        raise click.ClickException(str(exc)) from None


def _serve_on_ray(name: str, host: str, port: int, address: str, config: dict[str, Any], **options: Any) -> None:
    try:
        from experts.ray_service import serve_expert_on_ray
    except ModuleNotFoundError as exc:
        raise VisionRouterError(
            f"expert serve --ray needs Ray Serve ({exc.name} is not installed): {install_hint('ray')}"
        ) from None
    click.echo(f"vision-router: starting expert {name} on Ray Serve (Ray: {address}) ...", err=True)
    serve_expert_on_ray(
        name, host=host, port=port, address=None if address == "auto" else address, config=config, **options
    )


if __name__ == "__main__":
    serve_command()

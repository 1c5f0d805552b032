"""`vision-router serve`: the Ollama-compatible proxy that gives text-only models vision."""

from __future__ import annotations

import os

import click

from experts.access import AccessError, check_bind_host, is_loopback_host
from router.commands import common
from router.commands.common import settings_from


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="port to listen on (default 11435, or [serve] port; 0 picks a free one)",
)
@click.option("--upstream", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--allow-remote", is_flag=True, help="allow listening on a non-loopback address")
@click.option(
    "--token", envvar="VISION_ROUTER_TOKEN", help="require `Authorization: Bearer TOKEN` (env VISION_ROUTER_TOKEN)"
)
@click.option(
    "--route",
    "route",
    multiple=True,
    metavar="MODEL",
    help="route only these models (glob patterns, repeatable; default: every model without vision)",
)
@click.option("--skip", "skip", multiple=True, metavar="MODEL", help="never route these models (glob, repeatable)")
@click.option("--protocol", type=click.Choice(["tags", "tools", "auto"]), help="how the model asks for experts")
@click.option("--max-body-mib", type=click.IntRange(1, 4096), help="largest request body accepted (default 64)")
@click.option("--upstream-timeout", type=float, help="seconds Ollama may stay silent mid-request (default 600)")
@click.option("--max-rounds", type=click.IntRange(0, 8), help="expert rounds per message (default 2)")
@click.option("--no-cache", is_flag=True, help="keep expert results in memory only")
@click.option(
    "--max-concurrent", type=click.IntRange(1), help="requests in flight; more get Ollama's 503 (default 512)"
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="show streaming clients which experts are looking, in Ollama's `thinking` field (default: off, or "
    "[serve] progress)",
)
@click.option("--findings", is_flag=True, help="end each routed answer with a line of what the experts found")
@click.pass_context
def serve_command(
    ctx,
    host,
    port,
    upstream,
    allow_remote,
    token,
    route,
    skip,
    protocol,
    max_body_mib,
    upstream_timeout,
    max_rounds,
    no_cache,
    max_concurrent,
    progress,
    findings,
):
    """Serve an Ollama-compatible API that gives text-only models vision.

    Clients point at it instead of Ollama, e.g. `OLLAMA_HOST=127.0.0.1:11435 ollama run qwen3-vision`.
    """
    import uvicorn

    from experts.service import listen
    from router import __version__
    from router.serve.proxy import ProxyConfig, VisionProxy, create_app, server_options

    settings = settings_from(
        ctx, ollama_host=upstream, protocol=protocol, max_rounds=max_rounds, cache_dir="" if no_cache else None
    )
    conf = settings.serve  # config.toml's [serve] table; flags win
    port = conf.port if port is None else port  # --port 0 is a port choice, not "unset"
    token = token or conf.token
    try:
        check_bind_host(host, allow_remote)  # resolved as the socket will be: "" and 0.0.0.0 are not loopback
    except AccessError as exc:
        raise click.UsageError(str(exc)) from None
    if not token and not is_loopback_host(host):
        click.echo("warning: listening beyond loopback without --token: anyone who can reach it can use it", err=True)
    cfg = ProxyConfig(
        route=list(route) or list(conf.route),
        skip=list(skip) or list(conf.skip),
        token=token or None,
        max_body_bytes=(max_body_mib or conf.max_body_mib) * 1024 * 1024,
        upstream_timeout_s=upstream_timeout or conf.upstream_timeout,
        max_concurrent=max_concurrent or conf.max_concurrent,
        max_connections=conf.max_connections,
        header_timeout_s=conf.header_timeout,
        body_timeout_s=conf.body_timeout,
        progress=conf.progress if progress is None else progress,
        findings=findings or conf.findings,
    )
    app = create_app(settings, common.configured_registry(settings), config=cfg)
    proxy: VisionProxy = app.state.proxy
    # Bound now: the address printed is the one bound (port 0 picks a free one), a busy port is one line.
    sock, url = listen(host, port)
    address = url.removeprefix("http://")
    # Checked once, here: the same set the prompt, the tools and /_vision/health offer, until a refresh.
    availability = proxy.orch.registry.availability()
    runnable = [n for n, why in availability.items() if why is None]
    sock.listen(2048)  # listening before the address is printed: a client that reads it can connect at once
    click.echo(
        f"vision-router {__version__} on {url} -> Ollama at {proxy.cfg.upstream} "
        f"(protocol {settings.protocol}; experts: {', '.join(runnable) or 'none'})",
        err=True,
    )
    for name, why in availability.items():
        if why is not None:
            click.echo(f"  {name}: not offered, {why}", err=True)
    click.echo(f"use it: OLLAMA_HOST={address} ollama run {settings.model}", err=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=os.environ.get("VISION_ROUTER_LOG", "warning"),
            timeout_graceful_shutdown=5,
            **server_options(cfg),
        )
    )
    server.run(sockets=[sock])

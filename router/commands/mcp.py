"""`vision-router mcp`: the vision experts as an MCP server (stdio for desktop clients, or streamable HTTP)."""

from __future__ import annotations

import click

from router.commands import common
from router.commands.common import settings_from


@click.command("mcp")
@click.option("--http", "http", is_flag=True, help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to listen on")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="HTTP: port (0 picks a free one)"
)
@click.option("--allow-remote", is_flag=True, help="HTTP: allow listening on a non-loopback address")
@click.option(
    "--token",
    envvar="VISION_ROUTER_TOKEN",
    help="HTTP: require `Authorization: Bearer TOKEN` (env VISION_ROUTER_TOKEN)",
)
@click.option(
    "--allow-dir",
    "allow_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="read image paths only inside this folder (repeatable); over HTTP no path is read without it",
)
@click.option("--db", default=None, help="image index for the `search` tool (default: the `index` command's)")
@click.pass_context
def mcp_command(ctx, http, host, port, allow_remote, token, allow_dirs, db):
    """Serve the vision experts as MCP tools (ocr, detect, clip, caption; search with an index).

    Over stdio (the default) a desktop client launches this command itself and images may be file
    paths on this machine; see docs/clients.md for Claude Desktop, Open WebUI and llm set-up.
    """
    import anyio

    from router.serve.mcp_server import ImagePolicy, VisionMcp

    settings = settings_from(ctx)
    policy = ImagePolicy.for_transport("http" if http else "stdio", allow_dirs)
    if http:
        from experts.access import check_bind_host

        check_bind_host(host, allow_remote)
    server = VisionMcp(settings, common.configured_registry(settings), policy=policy, db=db)
    offered = ", ".join(t.name for t in server.tools()) or "none"
    click.echo(f"vision-router mcp: tools {offered}", err=True)
    for name, why in server.left_out.items():
        click.echo(f"  not offered: {name}: {why}", err=True)
    if not http:
        anyio.run(server.run_stdio)
        return
    if allow_remote and not token:
        click.echo("warning: listening beyond loopback without --token: anyone who can reach it can use it", err=True)
    _serve_http(server, host, port, token, allow_remote)


def _serve_http(server, host: str, port: int, token: str | None, allow_remote: bool) -> None:
    import socket

    import uvicorn

    from router.serve.mcp_server import loopback_hosts

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # listening before the address is printed: a client that reads it can connect at once
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    # Loopback: only loopback Host headers (a web page cannot reach it by DNS rebinding).
    allowed = None if allow_remote else loopback_hosts()
    app = server.http_app(token=token, allowed_hosts=allowed)
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    click.echo(
        f"vision-router mcp: streamable HTTP on http://{shown}:{port}/mcp"
        + (" (bearer token required)" if token else ""),
        err=True,
    )
    from router.serve.guard import guard_options

    # The proxy's connection guards: headers within 10 s (slowloris), bounded connections and headers.
    uvicorn.Server(uvicorn.Config(app, log_level="warning", **guard_options())).run(sockets=[sock])

"""`vision-router tools`: the experts that can run here, as native tool definitions."""

from __future__ import annotations

import json

import click

from experts.errors import VisionRouterError
from experts.registry import unavailable_reason
from router.commands import common
from router.commands.common import settings_from
from router.core.toolspec import ollama_tools, openai_tools


@click.command("tools")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ollama", "openai"]),
    default="ollama",
    show_default=True,
    help="tool definition format",
)
@click.option("--expert", "experts", multiple=True, help="only these experts (repeatable)")
@click.pass_context
def tools_command(ctx: click.Context, fmt: str, experts: tuple[str, ...]) -> None:
    """Print the experts that can run here (engine and weights present) as native tool definitions (JSON),
    for frontends that configure tools. `vision-router expert list` says why any other is N/A."""
    reg = common.configured_registry(settings_from(ctx))
    if experts:
        names = []
        for n in experts:
            try:
                names.append(reg.expert_class(n).name)
            except VisionRouterError as exc:  # one clear line for an unknown expert
                raise click.ClickException(str(exc)) from None
            status = reg.status(n)
            if not status.get("ok"):  # asked for by name: say why it is left out instead of dropping it
                raise click.ClickException(f"{n} cannot run here: {unavailable_reason(status)}")
    else:
        names = reg.runnable()
    tools = openai_tools(reg, names) if fmt == "openai" else ollama_tools(reg, names)
    click.echo(json.dumps(tools, indent=2, ensure_ascii=False))

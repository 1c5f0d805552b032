"""`vision-router tools`: the experts as native tool definitions."""

from __future__ import annotations

import json

import click

from experts.errors import VisionRouterError
from experts.registry import default_registry
from router.core.toolspec import ollama_tools, openai_tools


@click.command("tools")
@click.option("--format", "fmt", type=click.Choice(["ollama", "openai"]), default="ollama", show_default=True,
              help="tool definition format")
@click.option("--expert", "experts", multiple=True, help="only these experts (repeatable)")
def tools_command(fmt: str, experts: tuple[str, ...]) -> None:
    """Print the experts as native tool definitions (JSON), for frontends that configure tools."""
    reg = default_registry()
    names = list(experts) or None
    if names:
        for n in names:
            try:
                reg.expert_class(n)
            except VisionRouterError as exc:  # one clear line for an unknown expert
                raise click.ClickException(str(exc)) from None
    tools = openai_tools(reg, names) if fmt == "openai" else ollama_tools(reg, names)
    click.echo(json.dumps(tools, indent=2, ensure_ascii=False))

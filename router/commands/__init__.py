"""The ``vision-router`` command line: one module per command, loaded only when used.

``vision-router --help`` imports no engine and needs no optional extra: every command module imports
only click and light modules at its top, and a command whose extra is missing says which to install.
"""

from __future__ import annotations

import logging

import click

from router import __version__
from router.commands.common import Group, configured_registry, settings_from

# name -> module:attribute; each module is imported only when its command is used or listed.
COMMANDS = {
    "ask": "router.commands.ask:ask",
    "demo": "router.commands.demo:demo",
    "expert": "router.commands.expert:expert",
    "doctor": "router.commands.doctor:doctor",
    "serve": "router.commands.serve:serve_command",
    "tools": "router.commands.tools:tools_command",
    "batch": "router.commands.batch:batch_command",
    "index": "router.commands.index:index_command",
    "search": "router.commands.index:search_command",
    "preset": "router.commands.preset:preset_command",
    "eval": "router.commands.eval:eval_command",
    "mcp": "router.commands.mcp:mcp_command",
}


# What `vision-router --help` lists for each command (tests/test_cli.py keeps them equal to the commands' own).
SUMMARIES = {
    "ask": "Ask MODEL a QUESTION about IMAGES (paths, or - for stdin).",
    "demo": "The main job on its embedded default image: the experts on it, and the model's answer.",
    "expert": "List and run the vision experts directly.",
    "doctor": "Check Ollama, the model, and every expert's engine and weights.",
    "serve": "Serve an Ollama-compatible API that gives text-only models vision.",
    "tools": "Print the experts as native tool definitions (JSON), for frontends that configure tools.",
    "batch": "Run experts (and with -q the model) on every image under PATHS; one JSON line per image.",
    "index": "Index the images under PATHS for `search` and `ask --rag`.",
    "search": "Search the image index by QUERY text and/or --image.",
    "preset": "Worked tasks as editable TOML files (experts, rules, prompt).",
    "eval": "Benchmark routing: does the keyword table, and does MODEL, ask for the right experts?",
    "mcp": "Serve the experts as MCP tools (stdio, or streamable HTTP).",
}


@click.group(cls=Group, lazy=COMMANDS, summaries=SUMMARIES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vision-router")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="VISION_ROUTER_CONFIG",
    help="config.toml (default ~/.config/vision-router/config.toml)",
)
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int) -> None:
    """Give a text-only Ollama model eyes: vision experts answer [VISION: ...] tags."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="vision-router")


__all__ = ["cli", "configured_registry", "main", "settings_from"]

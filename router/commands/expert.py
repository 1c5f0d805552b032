"""`vision-router expert list|run|serve`: the vision experts without an LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from experts.registry import unavailable_reason
from experts.schema import ImageAnalysis
from router.commands import common
from router.commands.common import Group, load_image_arg, parse_kv, settings_from
from router.core.context import render_image

EXPERT_LAZY_COMMANDS = {"serve": "router.commands.expert_serve:serve_command"}


@click.group("expert", cls=Group, lazy=EXPERT_LAZY_COMMANDS)
def expert() -> None:
    """List and run the vision experts directly."""


@expert.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def expert_list(ctx, as_json):
    """The installed experts, their aliases, arguments and engine status."""
    settings = settings_from(ctx)
    reg = common.configured_registry(settings)
    rows = []
    for name in reg.names():
        cls = reg.expert_class(name)
        status = reg.status(name)
        if not status.get("ok"):
            status["reason"] = unavailable_reason(status)
        rows.append(
            {
                "name": name,
                "aliases": list(cls.aliases),
                "description": cls.description,
                "positional": cls.positional,
                "args": cls.args_schema().get("properties", {}),
                "status": status,
            }
        )
    if as_json:
        click.echo(json.dumps({"experts": rows, "plugin_errors": reg.load_errors}, indent=2, ensure_ascii=False))
        return
    for r in rows:
        ok = "ok " if r["status"].get("ok") else "N/A"
        aliases = f" (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
        click.echo(f"{r['name']:<9} [{ok}] {r['description']}{aliases}")
        arg_names = ", ".join(r["args"]) or "none"
        click.echo(f"{'':<15}args: {arg_names}" + (f"; free text fills `{r['positional']}`" if r["positional"] else ""))
        if r["status"].get("runs"):  # which engine answers which labels (detect: learned or OpenCV)
            click.echo(f"{'':<15}runs: {r['status']['runs']}")
        if not r["status"].get("ok"):
            click.echo(f"{'':<15}why N/A: {r['status']['reason']}")
    for name, err in reg.load_errors.items():
        click.echo(f"{name:<9} [ERR] plugin failed to load: {err}")


@expert.command("run")
@click.argument("name")
@click.argument("image", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("query", required=False)
@click.option("-a", "--arg", "args", multiple=True, metavar="KEY=VALUE", help="expert argument (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the result schema as JSON")
@click.option(
    "--annotate",
    "annotate_path",
    type=click.Path(dir_okay=False),
    help="also write IMAGE with what the expert found drawn on it (PNG)",
)
@click.pass_context
def expert_run(ctx, name, image, query, args, as_json, annotate_path):
    """Run expert NAME on IMAGE; QUERY fills the expert's free-text argument."""
    settings = settings_from(ctx)
    reg = common.configured_registry(settings)
    exp = reg.get(name)
    kv: dict[str, Any] = parse_kv(args)
    if query is not None:
        if not exp.positional:
            raise click.UsageError(f"{exp.name} takes no free-text argument")
        kv.setdefault(exp.positional, query)
    img = load_image_arg(image, settings)
    result = exp.analyze(img, kv)
    analysis = ImageAnalysis.merge(img.image_id, 1, [result], img.width, img.height)
    if annotate_path:
        from router.apps.annotate import annotate, find_font

        written = annotate(img, analysis, Path(annotate_path))
        click.echo(f"annotated: {written} (font: {find_font()})", err=True)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    click.echo("\n".join(render_image(analysis)))
    click.echo(f"({exp.name}: {result.timing_ms:.0f} ms)", err=True)
    common.echo_hints([result])

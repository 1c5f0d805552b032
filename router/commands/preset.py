"""`vision-router preset list|show`: worked tasks as editable TOML files."""

from __future__ import annotations

from pathlib import Path

import click

from router.apps.presets import LANGS, list_presets, load_preset
from router.core.config import read_text


@click.group("preset")
def preset_command() -> None:
    """Worked tasks as editable TOML files (experts, rules, prompt); use with `ask --preset NAME`."""


@preset_command.command("list")
@click.option("--json", "as_json", is_flag=True)
def preset_list(as_json: bool) -> None:
    """The presets you can name with --preset, and where each file is."""
    import json

    presets = list_presets()
    if as_json:
        rows = [
            {
                "name": p.name,
                "title": p.title,
                "title_zh": p.title_zh,
                "description": p.description,
                "experts": [e.name for e in p.experts],
                "source": p.source,
            }
            for p in presets
        ]
        click.echo(json.dumps({"presets": rows}, ensure_ascii=False, indent=2))
        return
    for p in presets:
        title = " / ".join(t for t in (p.title, p.title_zh) if t)
        click.echo(f"{p.name:<24} {title}")
        click.echo(f"{'':<24} experts: {', '.join(e.name for e in p.experts) or 'none'}; file: {p.source}")


@preset_command.command("show")
@click.argument("name")
@click.option(
    "--prompt",
    "show_prompt",
    type=click.Choice(LANGS),
    help="show the system prompt as sent, in this language, instead of the file",
)
def preset_show(name: str, show_prompt: str | None) -> None:
    """Print preset NAME's file (copy it, edit it, and pass its path to --preset)."""
    preset = load_preset(name)
    if show_prompt:
        click.echo(preset.system(show_prompt) or "(no system prompt)")
        return
    click.echo(read_text(Path(preset.source), "preset file"), nl=False)

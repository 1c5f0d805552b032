"""What the command modules share: one-line errors, lazy sub-commands, settings and the expert registry."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import click

from experts.errors import VisionRouterError
from experts.images import DecodedImage, decode_image, load_image_file, read_image_stream
from experts.registry import Registry, default_registry
from experts.schema import ExpertResult
from router.core.config import Settings


class Group(click.Group):
    """Turns the router's errors into one line and exit status 1, never a traceback.

    Commands that live in their own modules are imported only when used (fast start-up, and one
    concern per module); ``lazy`` maps a command name to ``module:attribute``.
    """

    def __init__(
        self, *args: Any, lazy: dict[str, str] | None = None, summaries: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self.summaries = dict(summaries or {})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` from the one-line summaries, so listing imports no command
        module (each would pull in its library: the eval suite, the RAG index, ...)."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.summaries:
                rows.append((name, self.summaries[name]))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - max(len(n) for n in self.lazy))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        import importlib.util

        names = set(super().list_commands(ctx))
        for name, target in self.lazy.items():
            if importlib.util.find_spec(target.partition(":")[0]) is not None:
                names.add(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self.lazy:
            import importlib

            module, _, attr = self.lazy[name].partition(":")
            try:
                cmd = getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name == module:
                    return None
                return _missing_extra(name, exc.name)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisionRouterError as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:  # an optional extra that the command needs is missing
            name = ctx.invoked_subcommand or ctx.info_name
            raise click.ClickException(
                f"`{name}` needs a package that is not installed: {exc.name} ({extra_hint(exc.name)})"
            ) from None
        except KeyboardInterrupt:
            click.echo("", err=True)
            raise click.exceptions.Exit(130) from None


def _missing_extra(name: str, module: str | None) -> click.Command:
    """A stand-in for a command whose optional extra is not installed: it is listed in ``--help``
    with the extra to install, and running it prints that in one line (exit 1)."""
    message = f"`{name}` needs a package that is not installed: {module} ({extra_hint(module)})"

    def fail(**_: Any) -> None:
        raise click.ClickException(message)

    return click.Command(
        name,
        callback=fail,
        help=f"[not installed: {extra_hint(module)}]",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        params=[click.Argument(["args"], nargs=-1, required=False)],
        add_help_option=False,
    )


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings for a command: config file (``--config``) then the command's flags."""
    return Settings.load((ctx.obj or {}).get("config"), **overrides)


def configured_registry(settings: Settings) -> Registry:
    """The process-wide expert registry with the configured per-expert settings applied."""
    return settings.configure(default_registry())


def parse_kv(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--arg KEY=VALUE`` pairs as a dict."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{p!r}: expected KEY=VALUE", param_hint="--arg")
        out[key.strip()] = value
    return out


def echo_hints(results: Iterable[ExpertResult]) -> None:
    """Each distinct hint the experts left with their results (a better detector to install, say), one line
    each on stderr: for the user, never in the model's context."""
    for hint in dict.fromkeys(r.hint for r in results if r.hint):
        click.echo(f"hint: {hint}", err=True)


def extra_hint(module: str | None) -> str:
    """The pip command that brings in MODULE's extra, worded for how this copy was installed."""
    from experts.install import install_hint

    extras = {
        "mcp": "mcp",
        "ray": "ray",
        "uvicorn": "serve",
        "starlette": "serve",
        "open_clip": "clip",
        "torch": "clip",
        "transformers": "caption",
        "qdrant_client": "rag",
        "rapidocr": "onnx",
        "onnxruntime": "onnx",
        "paddleocr": "ocr",
        "paddle": "ocr",
        "ai_edge_litert": "people",
        "pyarrow": "ray",
    }
    top = (module or "").split(".")[0]
    extra = extras.get(top)
    if not extra:
        from experts.install import origin

        # docs/ exists only in a checkout; anywhere else the [all] extra brings whatever a command needs.
        return "see docs/install.md" if origin().kind == "checkout" else f"every extra: {install_hint('all')}"
    return install_hint(extra) + (" (or [caption])" if top == "torch" else "")


def load_image_arg(path: str, settings: Settings) -> DecodedImage:
    """An image named on the command line (``-`` reads stdin), checked against the configured limits."""
    if path == "-":
        limits = settings.image_limits()
        data = read_image_stream(sys.stdin.buffer, "stdin", limits["max_bytes"])  # never past the limit
        return decode_image(data, source="stdin", **limits)
    return load_image_file(path, **settings.image_limits())

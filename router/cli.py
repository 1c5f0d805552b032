"""The ``vision-router`` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from experts.errors import VisionRouterError
from experts.images import decode_image, load_image_file
from experts.registry import Registry, default_registry
from experts.schema import ImageAnalysis
from router import __version__
from router.config import BASE_MODEL, Settings
from router.context import render_context, render_image
from router.trace import render_trace


class _Group(click.Group):
    """Turns the router's errors into one line and exit status 1, never a traceback.

    Commands that live in their own modules are imported only when used (fast start-up, and one
    concern per module); ``lazy`` maps a command name to ``module:attribute``.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

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
                raise click.ClickException(
                    f"`{name}` needs a package that is not installed: {exc.name} ({_extra_hint(exc.name)})"
                ) from None
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisionRouterError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("", err=True)
            raise click.exceptions.Exit(130) from None


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings for a command: config file (``--config``) then the command's flags."""
    return Settings.load((ctx.obj or {}).get("config"), **overrides)


def configured_registry(settings: Settings) -> Registry:
    """The process-wide expert registry with the configured per-expert settings applied."""
    return settings.configure(default_registry())


def _parse_kv(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{p!r}: expected KEY=VALUE", param_hint="--arg")
        out[key.strip()] = value
    return out


# Commands kept in their own modules.
LAZY_COMMANDS = {
    "serve": "router.proxy:serve_command",
    "tools": "router.toolspec:tools_command",
    "batch": "router.batch:batch_command",
    "index": "router.rag:index_command",
    "search": "router.rag:search_command",
    "preset": "router.presets:preset_command",
    "eval": "router.evaluate:eval_command",
}
EXPERT_LAZY_COMMANDS = {"serve": "experts.service:serve_command"}


def _extra_hint(module: str | None) -> str:
    extras = {"uvicorn": "serve", "starlette": "serve", "open_clip": "clip", "torch": "clip or caption",
              "transformers": "caption", "qdrant_client": "rag", "rapidocr": "ocr", "paddleocr": "ocr"}
    top = (module or "").split(".")[0]
    extra = extras.get(top)
    return f"pip install 'ollama-vision-router[{extra}]'" if extra else "see the README"


@click.group(cls=_Group, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vision-router")
@click.option("--config", type=click.Path(dir_okay=False), envvar="VISION_ROUTER_CONFIG",
              help="config.toml (default ~/.config/vision-router/config.toml)")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int) -> None:
    """Give a text-only Ollama model eyes: vision experts answer [VISION: ...] tags."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


# --- ask ----------------------------------------------------------------------------------------
@cli.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-q", "--question", help="what to ask about the image(s)")
@click.option("-m", "--model", help="Ollama model (default qwen3-vision, see Modelfile)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: answer, results, trace")
@click.option("--no-stream", is_flag=True, help="print the answer only when complete")
@click.option("--trace", is_flag=True, help="show the decision path on stderr")
@click.option("--max-rounds", type=click.IntRange(0, 8), help="expert rounds per message (default 2)")
@click.option("--no-cache", is_flag=True, help="do not read or write the on-disk result cache")
@click.option("--protocol", type=click.Choice(["tags", "tools", "auto"]), help="how the model asks for experts")
@click.option("--preset", help="a worked task, e.g. ecommerce-main-image (see `vision-router preset list`)")
@click.option("--rag", "rag_db", type=click.Path(file_okay=False), help="add context retrieved from this index")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False),
              help="write each image with what the experts found drawn on it into this folder")
@click.pass_context
def ask(ctx, images, question, model, ollama_host, as_json, no_stream, trace, max_rounds, no_cache, protocol,
        preset, rag_db, annotate_dir):
    """Ask MODEL a QUESTION about IMAGES (paths, or - for stdin)."""
    from router.orchestrator import Orchestrator

    settings = settings_from(ctx, model=model, ollama_host=ollama_host, max_rounds=max_rounds,
                         cache_dir="" if no_cache else None, protocol=protocol)
    forced: list[tuple[str, dict[str, Any]]] = []
    extra_context: str | None = None
    system: str | None = None
    if preset:
        from router.presets import prepare

        prepared = prepare(preset, question)
        question, forced, system = prepared.question, prepared.experts, prepared.system
    if not question:
        raise click.UsageError("give a question with -q/--question (or a --preset)")
    orch = Orchestrator(settings, registry=configured_registry(settings))
    if rag_db:
        from router.rag import retrieve_context

        extra_context = retrieve_context(rag_db, question, settings)
    decoded = [_load(p, settings) for p in images]
    stream_out = not as_json and not no_stream

    def on_text(t: str) -> None:
        click.echo(t, nl=False)
        sys.stdout.flush()

    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question, "images": decoded})
    final = orch.chat(messages, on_text=on_text if stream_out else None, experts=forced,
                      extra_context=extra_context)
    if as_json:
        click.echo(json.dumps(_final_json(final), ensure_ascii=False, indent=2))
    else:
        if not stream_out:
            click.echo(final.answer, nl=False)
        click.echo("")
    if annotate_dir:
        from router.annotate import annotate

        out_dir = Path(annotate_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for a in final.analyses:
            img = decoded[a.index - 1]
            written = annotate(img, a, out_dir / f"{a.index:02d}-{a.image_id[:12]}.png")
            click.echo(f"annotated: {written}", err=True)
    if trace:
        click.echo(render_trace(final.trace), err=True)


def _load(path: str, settings: Settings):
    if path == "-":
        return decode_image(sys.stdin.buffer.read(), source="stdin", **settings.image_limits())
    return load_image_file(path, **settings.image_limits())


def _final_json(final) -> dict[str, Any]:
    return {
        "answer": final.answer,
        "model": final.model,
        "done_reason": final.done_reason,
        "stats": final.stats,
        "images": [a.model_dump(mode="json", exclude={"results"}) for a in final.analyses],
        "trace": final.trace.model_dump(mode="json"),
    }


# --- expert -------------------------------------------------------------------------------------
@cli.group(cls=_Group, lazy=EXPERT_LAZY_COMMANDS)
def expert() -> None:
    """List and run the vision experts directly."""


@expert.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def expert_list(ctx, as_json):
    """The installed experts, their aliases, arguments and engine status."""
    settings = settings_from(ctx)
    reg = configured_registry(settings)
    rows = []
    for name in reg.names():
        cls = reg.expert_class(name)
        try:
            status = reg.get(name).status()
        except Exception as exc:  # status must never crash the listing
            status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        rows.append({"name": name, "aliases": list(cls.aliases), "description": cls.description,
                     "positional": cls.positional, "args": cls.args_schema().get("properties", {}),
                     "status": status})
    if as_json:
        click.echo(json.dumps({"experts": rows, "plugin_errors": reg.load_errors}, indent=2, ensure_ascii=False))
        return
    for r in rows:
        ok = "ok " if r["status"].get("ok") else "N/A"
        aliases = f" (aliases: {', '.join(r['aliases'])})" if r["aliases"] else ""
        click.echo(f"{r['name']:<9} [{ok}] {r['description']}{aliases}")
        arg_names = ", ".join(r["args"]) or "none"
        click.echo(f"{'':<15}args: {arg_names}" + (f"; free text fills `{r['positional']}`" if r["positional"] else ""))
        if not r["status"].get("ok"):
            click.echo(f"{'':<15}{r['status'].get('error') or r['status'].get('hint') or ''}")
    for name, err in reg.load_errors.items():
        click.echo(f"{name:<9} [ERR] plugin failed to load: {err}")


@expert.command("run")
@click.argument("name")
@click.argument("image", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("query", required=False)
@click.option("-a", "--arg", "args", multiple=True, metavar="KEY=VALUE", help="expert argument (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the result schema as JSON")
@click.option("--annotate", "annotate_path", type=click.Path(dir_okay=False),
              help="also write IMAGE with what the expert found drawn on it (PNG)")
@click.pass_context
def expert_run(ctx, name, image, query, args, as_json, annotate_path):
    """Run expert NAME on IMAGE; QUERY fills the expert's free-text argument."""
    settings = settings_from(ctx)
    reg = configured_registry(settings)
    exp = reg.get(name)
    kv: dict[str, Any] = _parse_kv(args)
    if query is not None:
        if not exp.positional:
            raise click.UsageError(f"{exp.name} takes no free-text argument")
        kv.setdefault(exp.positional, query)
    img = _load(image, settings)
    result = exp.analyze(img, kv)
    analysis = ImageAnalysis.merge(img.image_id, 1, [result], img.width, img.height)
    if annotate_path:
        from router.annotate import annotate, find_font

        written = annotate(img, analysis, Path(annotate_path))
        click.echo(f"annotated: {written} (font: {find_font()})", err=True)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    click.echo("\n".join(render_image(analysis)))
    click.echo(f"({exp.name}: {result.timing_ms:.0f} ms)", err=True)


# --- demo ---------------------------------------------------------------------------------------
@cli.command()
@click.option("-m", "--model", help="Ollama model (default qwen3-vision)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--save", type=click.Path(dir_okay=False), help="also write the demo image here")
@click.pass_context
def demo(ctx, model, ollama_host, save):
    """The main job on its embedded default: a product shot, the experts on it, and the model's answer
    when Ollama is reachable."""
    import ollama

    from router.demo import DEMO_QUESTION, demo_image_bytes
    from router.dispatch import ExpertCall
    from router.orchestrator import Orchestrator

    settings = settings_from(ctx, model=model, ollama_host=ollama_host)
    data = demo_image_bytes()
    if save:
        Path(save).write_bytes(data)
        click.echo(f"demo image written to {save}", err=True)
    img = decode_image(data, source="demo.png")
    orch = Orchestrator(settings, registry=configured_registry(settings))
    wanted = [n for n in ("ocr", "detect") if orch.registry.resolve(n)]
    click.echo(f"Demo image: {img.width}x{img.height} product shot (router/data/demo.png)")
    click.echo(f"Question:   {DEMO_QUESTION}\n")
    click.echo(f"Experts on it ({', '.join(wanted) or 'none installed'}):")
    results = orch.dispatcher.run_sync([ExpertCall(img, 1, n, source="demo") for n in wanted])
    analysis = ImageAnalysis.merge(img.image_id, 1, results, img.width, img.height)
    click.echo(render_context([analysis]))
    click.echo("")

    try:
        client = ollama.Client(host=orch.host, timeout=5)
        client.show(settings.model)
    except ollama.ResponseError as exc:
        if exc.status_code == 404:
            click.echo(f"Ollama is up at {orch.host}, but model '{settings.model}' is missing. Create it:")
            _print_setup(settings.model, with_serve=False)
            return
        raise click.ClickException(f"Ollama at {orch.host}: {exc.error}") from None
    except Exception:
        click.echo(f"Ollama is not reachable at {orch.host}, so the answer step is skipped. To bring the LLM in:")
        _print_setup(settings.model, with_serve=True)
        return

    click.echo(f"Answer from {settings.model} (streamed):")
    final = orch.ask(DEMO_QUESTION, [img], on_text=lambda t: click.echo(t, nl=False))
    click.echo("")
    click.echo(render_trace(final.trace), err=True)


def _print_setup(model: str, with_serve: bool) -> None:
    steps = []
    if with_serve:
        steps.append("ollama serve &                      # or start the Ollama app")
    steps += [
        f"ollama pull {BASE_MODEL}",
        f"ollama create {model} -f Modelfile",
        "vision-router demo",
    ]
    for s in steps:
        click.echo(f"  {s}")


# --- doctor -------------------------------------------------------------------------------------
@cli.command()
@click.option("-m", "--model", help="Ollama model to check (default qwen3-vision)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx, model, ollama_host, as_json):
    """Check Ollama, the model, and every expert's engine and weights."""
    import ollama

    from router.ollama_host import resolve_host
    from router.protocol import PROTOCOL_MARKER

    settings = settings_from(ctx, model=model, ollama_host=ollama_host)
    host = resolve_host(settings.ollama_host)
    checks: list[dict[str, Any]] = []
    client = ollama.Client(host=host, timeout=5)
    try:
        version = client._client.get("/api/version").json().get("version", "?")
        checks.append({"check": "ollama", "ok": True, "detail": f"reachable at {host} (version {version})"})
        try:
            shown = client.show(settings.model)
            has = PROTOCOL_MARKER in (shown.modelfile or "")
            caps = ", ".join(shown.capabilities or []) or "unknown"
            detail = f"'{settings.model}' present (capabilities: {caps}); " + (
                "its SYSTEM teaches the tag protocol" if has
                else "no tag protocol in its SYSTEM: the router will send it as a system message")
            checks.append({"check": "model", "ok": True, "detail": detail})
        except ollama.ResponseError as exc:
            hint = (f"run `ollama pull {BASE_MODEL} && ollama create {settings.model} -f Modelfile`"
                    if exc.status_code == 404 else exc.error)
            checks.append({"check": "model", "ok": False, "detail": f"'{settings.model}' missing: {hint}"})
    except Exception:
        checks.append({"check": "ollama", "ok": False,
                       "detail": f"not reachable at {host}: start `ollama serve` or set OLLAMA_HOST / --ollama-host"})
    reg = configured_registry(settings)
    for name in reg.names():
        try:
            st = reg.get(name).status()
        except Exception as exc:
            st = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        detail = "; ".join(f"{k}: {v}" for k, v in st.items() if k != "ok")
        checks.append({"check": f"expert {name}", "ok": bool(st.get("ok")), "detail": detail})
    for name, err in reg.load_errors.items():
        checks.append({"check": f"plugin {name}", "ok": False, "detail": err})
    cache = settings.resolved_cache_dir()
    checks.append({"check": "cache", "ok": True, "detail": cache or "memory only"})
    if as_json:
        click.echo(json.dumps({"checks": checks}, indent=2, ensure_ascii=False))
    else:
        for c in checks:
            click.echo(f"[{'ok' if c['ok'] else '!!'}] {c['check']:<16} {c['detail']}")
    if not all(c["ok"] for c in checks if c["check"] in ("ollama", "model")):
        ctx.exit(1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="vision-router")


if __name__ == "__main__":  # pragma: no cover
    main()

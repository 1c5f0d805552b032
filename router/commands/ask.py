"""`vision-router ask`: the main job, a question about some images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from router.commands import common
from router.commands.common import load_image_arg, settings_from
from router.core.trace import render_trace


@click.command("ask")
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-q", "--question", help="what to ask about the image(s)")
@click.option("-m", "--model", help="Ollama model (default qwen3-vision, see Modelfile)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: answer, results, trace")
@click.option("--no-stream", is_flag=True, help="print the answer only when complete")
@click.option("--quiet", is_flag=True, help="no line of what the experts found (stderr) after the answer")
@click.option("--trace", is_flag=True, help="show the decision path on stderr")
@click.option("--max-rounds", type=click.IntRange(0, 8), help="expert rounds per message (default 2)")
@click.option("--no-cache", is_flag=True, help="do not read or write the on-disk result cache")
@click.option("--protocol", type=click.Choice(["tags", "tools", "auto"]), help="how the model asks for experts")
@click.option("--preset", help="a worked task, e.g. ecommerce-main-image (see `vision-router preset list`)")
@click.option("--rag", "rag_db", type=click.Path(file_okay=False), help="add context retrieved from this index")
@click.option(
    "--annotate",
    "annotate_dir",
    type=click.Path(file_okay=False),
    help="write each image with what the experts found drawn on it into this folder",
)
@click.pass_context
def ask(
    ctx,
    images,
    question,
    model,
    ollama_host,
    as_json,
    no_stream,
    quiet,
    trace,
    max_rounds,
    no_cache,
    protocol,
    preset,
    rag_db,
    annotate_dir,
):
    """Ask MODEL a QUESTION about IMAGES (paths, or - for stdin)."""
    from router.core.errors import UpstreamError
    from router.core.orchestrator import Orchestrator

    settings = settings_from(
        ctx,
        model=model,
        ollama_host=ollama_host,
        max_rounds=max_rounds,
        cache_dir="" if no_cache else None,
        protocol=protocol,
    )
    forced: list[tuple[str, dict[str, Any]]] = []
    extra_context: str | None = None
    system: str | None = None
    if preset:
        from router.apps.presets import prepare

        prepared = prepare(preset, question)
        question, forced, system = prepared.question, prepared.experts, prepared.system
    if not question:
        raise click.UsageError("give a question with -q/--question (or a --preset)")
    orch = Orchestrator(settings, registry=common.configured_registry(settings))
    orch.preload()  # the semantic router loads while the images are read
    if rag_db:
        from router.apps.rag import retrieve_context

        extra_context = retrieve_context(rag_db, question, settings)
    decoded = [load_image_arg(p, settings) for p in images]
    stream_out = not as_json and not no_stream
    printed: list[str] = []

    def on_text(t: str) -> None:
        printed.append(t)
        click.echo(t, nl=False)
        sys.stdout.flush()

    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question, "images": decoded})
    try:
        final = orch.chat(
            messages, on_text=on_text if stream_out else None, experts=forced, extra_context=extra_context
        )
    except UpstreamError as exc:
        # No answer from the model, but the experts can still say what they see (and draw it): that first,
        # then the one line.
        if printed:
            click.echo("")
        text, analyses = findings_without_model(orch, question, decoded, forced)
        click.echo(text)
        _after_findings(analyses, decoded, annotate_dir, quiet)
        raise click.ClickException(_without_model(exc, settings.model)) from None
    findings = final.findings
    if as_json:
        click.echo(json.dumps(_final_json(final, findings), ensure_ascii=False, indent=2))
    else:
        if not stream_out:
            click.echo(final.answer, nl=False)
        click.echo("")
        if findings and final.answered and not quiet:
            # On stderr, dimmed on a terminal: the user sees it after the answer, stdout stays the answer.
            click.echo(click.style(findings, dim=True), err=True)
    _after_findings(final.analyses, decoded, annotate_dir, quiet)
    if trace:
        click.echo(render_trace(final.trace), err=True)
    if not final.answered:
        # The findings were printed as the answer; the exit status tells scripts there was none.
        raise click.ClickException("the model gave no answer; the experts' findings are above")


def _after_findings(analyses: list[Any], images: list[Any], annotate_dir: str | None, quiet: bool) -> None:
    """What follows the experts' findings, with or without a model: their hints (stderr) and, with
    ``--annotate``, each image with the findings drawn on it, written into that folder (where, on stderr)."""
    if not quiet:
        common.echo_hints(r for a in analyses for r in a.results)
    if not annotate_dir:
        return
    from router.apps.annotate import annotate

    out_dir = Path(annotate_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for a in analyses:
        written = annotate(images[a.index - 1], a, out_dir / f"{a.index:02d}-{a.image_id[:12]}.png")
        click.echo(f"annotated: {written}", err=True)


def _without_model(exc: Exception, model: str) -> str:
    """The error line when the model could not be asked; Ollama not there also gets the set-up steps, as
    ``demo`` prints them (the model may not exist yet either)."""
    from router.core.errors import OllamaUnreachable
    from router.core.upstream import setup_steps

    if not isinstance(exc, OllamaUnreachable):
        return str(exc)
    return f"{exc}; the first time, also `{' && '.join(setup_steps(model, protocol_model=model))}`"


def findings_without_model(
    orch: Any, question: str, images: list[Any], forced: list[tuple[str, dict[str, Any]]]
) -> tuple[str, list[Any]]:
    """What the experts find when the model cannot answer, as text and per image: those the question's
    keywords (or the preset) pick, else the fallback experts, on every image; results the failed run
    already got come from the cache."""
    from experts.schema import ImageAnalysis
    from router.core.context import render_image
    from router.core.dispatch import ExpertCall

    wanted = list(forced) + [(m.expert, dict(m.args)) for m in orch.keywords.route(question)]
    wanted = [(n, a) for n, a in wanted if orch.registry.resolve(n)]
    if not wanted:
        wanted = [(n, {}) for n in orch.settings.fallback if orch.registry.resolve(n)]
    if not images or not wanted:
        return "No expert ran.", []
    calls = [
        ExpertCall(img, i, name, dict(args), source="cli") for i, img in enumerate(images, 1) for name, args in wanted
    ]
    results = orch.dispatcher.run_sync(calls)
    lines = ["What the experts found (the model could not be asked):"]
    analyses = []
    for i, img in enumerate(images, 1):
        mine = [r for c, r in zip(calls, results, strict=True) if c.image_index == i]
        analyses.append(ImageAnalysis.merge(img.image_id, i, mine, img.width, img.height))
        lines += render_image(analyses[-1])
    return "\n".join(lines), analyses


def _final_json(final: Any, findings: str) -> dict[str, Any]:
    return {
        "answer": final.answer,
        "findings": findings,
        "answered": final.answered,
        "model": final.model,
        "done_reason": final.done_reason,
        "stats": final.stats,
        "images": [a.model_dump(mode="json", exclude={"results"}) for a in final.analyses],
        "trace": final.trace.model_dump(mode="json"),
    }

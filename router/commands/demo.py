"""`vision-router demo`: the main job on its embedded default image."""

from __future__ import annotations

from pathlib import Path

import click

from experts.images import decode_image
from experts.schema import ImageAnalysis
from router.commands import common
from router.commands.common import settings_from
from router.core.context import render_context
from router.core.trace import render_trace


@click.command("demo")
@click.option("-m", "--model", help="Ollama model (default qwen3-vision)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--save", type=click.Path(dir_okay=False), help="also write the demo image here")
@click.pass_context
def demo(ctx, model, ollama_host, save):
    """The main job on its embedded default: a product shot, the experts on it, and the model's answer
    when Ollama is reachable."""
    from router.apps.demo import DEMO_QUESTION, demo_image_bytes
    from router.core.dispatch import ExpertCall, run_coroutine
    from router.core.errors import ModelNotFound, OllamaUnreachable, UpstreamError
    from router.core.orchestrator import Orchestrator
    from router.core.upstream import Upstream

    settings = settings_from(ctx, model=model, ollama_host=ollama_host)
    data = demo_image_bytes()
    if save:
        Path(save).write_bytes(data)
        click.echo(f"demo image written to {save}", err=True)
    img = decode_image(data, source="demo.png")
    orch = Orchestrator(settings, registry=common.configured_registry(settings))
    wanted = [n for n in ("ocr", "detect") if orch.registry.resolve(n)]
    click.echo(f"Demo image: {img.width}x{img.height} product shot (router/data/demo.png)")
    click.echo(f"Question:   {DEMO_QUESTION}\n")
    click.echo(f"Experts on it ({', '.join(wanted) or 'none installed'}):")
    results = orch.dispatcher.run_sync([ExpertCall(img, 1, n, source="demo") for n in wanted])
    analysis = ImageAnalysis.merge(img.image_id, 1, results, img.width, img.height)
    click.echo(render_context([analysis]))
    click.echo("")

    try:
        run_coroutine(Upstream(orch.host, timeout=5, protocol_model=settings.model).show(settings.model))
    except ModelNotFound:
        click.echo(f"Ollama is up at {orch.host}, but model '{settings.model}' is missing. Create it:")
        _print_setup(settings.model, with_serve=False)
        return
    except UpstreamError as exc:
        if not isinstance(exc, OllamaUnreachable) and exc.status != 504:
            raise  # Ollama is there and answered with an error: that one line
        click.echo(f"Ollama is not reachable at {orch.host}, so the answer step is skipped. To bring the LLM in:")
        _print_setup(settings.model, with_serve=True)
        return

    click.echo(f"Answer from {settings.model} (streamed):")
    final = orch.ask(DEMO_QUESTION, [img], on_text=lambda t: click.echo(t, nl=False))
    click.echo("")
    if not final.answered:
        click.echo(
            f"(no answer from {settings.model}: it kept asking for experts or replied with nothing; small "
            "models sometimes do. The experts' findings are above. Try again, or a larger base model.)"
        )
    click.echo(render_trace(final.trace), err=True)


def _print_setup(model: str, with_serve: bool) -> None:
    from router.core.upstream import setup_steps

    steps = []
    if with_serve:
        steps.append("ollama serve &                      # or start the Ollama app")
    steps += [*setup_steps(model, protocol_model=model), "vision-router demo"]
    for s in steps:
        click.echo(f"  {s}")

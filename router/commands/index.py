"""`vision-router index` and `search`: the multimodal image index (RAG)."""

from __future__ import annotations

import json
from typing import Any

import click

from router.apps.rag import DEFAULT_EMBED_MODEL, INDEX_EXPERTS
from router.commands import common
from router.commands.batch import ray_option
from router.commands.common import settings_from

_DB_HELP = (
    "index folder (embedded Qdrant) or Qdrant server URL; "
    "default $VISION_ROUTER_INDEX or ~/.local/share/vision-router/index"
)


@click.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--db", default=None, help=_DB_HELP)
@click.option(
    "-e",
    "--experts",
    "experts_spec",
    metavar="LIST",
    help=f"experts whose results are stored (default: those of {', '.join(INDEX_EXPERTS)} installed)",
)
@click.option(
    "--embed-model",
    help=f"text embeddings: ollama:MODEL or st:MODEL (default {DEFAULT_EMBED_MODEL}, "
    "or $VISION_ROUTER_EMBED_MODEL; an existing index keeps its own)",
)
@click.option("--no-clip", is_flag=True, help="no CLIP image vectors even when the clip expert can give them")
@click.option("--no-prune", is_flag=True, help="keep index entries of files that disappeared")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--no-progress", is_flag=True)
@ray_option
@click.pass_context
def index_command(
    ctx, paths, db, experts_spec, embed_model, no_clip, no_prune, ollama_host, as_json, no_progress, ray_address
):
    """Index the images under PATHS for `search` and `ask --rag`: OCR text, caption, objects and
    embeddings. Incremental: unchanged images are not processed again."""
    from router.apps.rag import default_db, index_images, make_embedder
    from router.core.orchestrator import Orchestrator

    settings = settings_from(ctx, ollama_host=ollama_host)
    orch = Orchestrator(settings, registry=common.configured_registry(settings))
    db = db or default_db()
    embedder = make_embedder(embed_model, settings.ollama_host) if embed_model else None
    experts = [n for n, _ in _parse_names(experts_spec)] or None
    analyser = None
    if ray_address:
        from functools import partial

        from router.apps.scale import ray_analyser, without_scale_keys

        factory = partial(common.configured_registry, without_scale_keys(settings))
        analyser = ray_analyser(settings, ray_address, registry_factory=factory)
    report = index_images(
        paths,
        db,
        orch,
        embedder=embedder,
        experts=experts,
        image_embedder=False if no_clip else True,
        prune=not no_prune,
        progress=not no_progress and not as_json,
        analyser=analyser,
    )
    if as_json:
        click.echo(json.dumps(dict(report.as_dict(), db=str(db)), ensure_ascii=False, indent=2))
        return
    for p, e in report.failed:
        click.echo(f"failed: {p}: {e}", err=True)
    click.echo(f"{report.render()} -> {db}", err=True)


@click.command("search")
@click.argument("query", required=False)
@click.option("--image", "image_path", type=click.Path(dir_okay=False, exists=True), help="find images like this one")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=5, show_default=True, help="how many results")
@click.option("--db", default=None, help=_DB_HELP)
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@click.pass_context
def search_command(ctx, query, image_path, k, db, ollama_host, as_json):
    """Search the image index by QUERY text and/or --image; fused ranking, with why each matched."""
    from experts.images import load_image_file
    from router.apps.rag import default_db, search
    from router.core.orchestrator import Orchestrator

    if not query and not image_path:
        raise click.UsageError("give a QUERY, --image IMG, or both")
    settings = settings_from(ctx, ollama_host=ollama_host)
    orch = Orchestrator(settings, registry=common.configured_registry(settings))
    db = db or default_db()
    img = load_image_file(image_path, **settings.image_limits()) if image_path else None
    hits = search(db, query, image=img, k=k, orchestrator=orch)
    if as_json:
        click.echo(
            json.dumps(
                {"query": query, "image": image_path, "db": str(db), "results": [h.as_dict() for h in hits]},
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    if not hits:
        click.echo("no results", err=True)
    for i, h in enumerate(hits, start=1):
        click.echo(f"{i}. {h.path}  (score {h.score:.4f})")
        text = (h.payload.get("ocr_text") or "").replace("\n", " / ")
        if text:
            click.echo(f"   text: {text[:100]}")
        if h.payload.get("objects"):
            click.echo(f"   objects: {', '.join(h.payload['objects'][:8])}")
        click.echo(f"   why: {'; '.join(h.why)}")


def _parse_names(spec: str | None) -> list[tuple[str, dict[str, Any]]]:
    from router.apps.batch import parse_experts

    return parse_experts(spec)

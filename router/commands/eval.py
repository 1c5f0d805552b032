"""`vision-router eval`: does the keyword table, and does the model, ask for the right experts?"""

from __future__ import annotations

import json
import sys

import click

from router.apps.evaluate import (
    DEFAULT_MAX_TOKENS,
    CaseResult,
    evaluator_from_registry,
    load_suite,
    render_report,
)
from router.commands import common
from router.core.keywords import KeywordRouter


@click.command("eval")
@click.option("-m", "--model", help="Ollama model to benchmark (default qwen3-vision, see Modelfile)")
@click.option(
    "--suite",
    "suite_path",
    type=click.Path(dir_okay=False),
    help="labelled prompts, TOML or JSONL (default: the shipped suite)",
)
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option(
    "--protocol",
    "protocol_mode",
    type=click.Choice(["tags", "tools"]),
    default="tags",
    show_default=True,
    help="how the model asks for experts: [VISION: ...] tags or native tool calls",
)
@click.option("--limit", type=click.IntRange(1), help="only the first N prompts")
@click.option("--keywords-only", is_flag=True, help="score the keyword router alone; no LLM, no Ollama")
@click.option(
    "--no-model",
    is_flag=True,
    help="score the router's own decision (keywords, then the semantic router, else the fallback); no LLM",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(0),
    default=DEFAULT_MAX_TOKENS,
    show_default=True,
    help="cap each reply (num_predict; a tag comes first, so routing is unaffected); 0 = no cap",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: scores and every prompt's decisions")
@click.pass_context
def eval_command(
    ctx, model, suite_path, ollama_host, protocol_mode, limit, keywords_only, no_model, max_tokens, as_json
):
    """Benchmark routing: do the keyword table, the semantic router and MODEL ask for the right experts?"""
    from router.core.config import Settings

    settings = Settings.load((ctx.obj or {}).get("config"), model=model, ollama_host=ollama_host)
    keywords = KeywordRouter.from_toml(settings.keywords_file)
    semantic = None
    if settings.semantic and not keywords_only:
        from router.core.semantic import SemanticRouter

        semantic = SemanticRouter.load(
            settings.exemplars_file,
            min_confidence=settings.semantic_min_confidence,
            cache_dir=settings.resolved_cache_dir(),
        )
    registry = common.configured_registry(settings)
    ev = evaluator_from_registry(registry, keywords, settings.fallback, semantic)
    suite = load_suite(suite_path, ev.experts)
    progress = None
    without_model = keywords_only or no_model
    if not as_json and not without_model and sys.stderr.isatty():

        def progress(i: int, n: int, r: CaseResult) -> None:
            click.echo(f"\r{i}/{n} {r.case.id:<24}", err=True, nl=i == n)

    report = ev.run(
        suite,
        model=None if without_model else settings.model,
        host=settings.ollama_host,
        protocol_mode=protocol_mode,
        inject_protocol=settings.inject_protocol,
        limit=limit,
        max_tokens=max_tokens or None,
        on_progress=progress,
    )
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(render_report(report))

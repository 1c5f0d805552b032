"""`vision-router batch`: every image under some folders to JSONL."""

from __future__ import annotations

import click

from router.commands import common
from router.commands.common import settings_from

_RAY_HELP = (
    "run as a Ray Data pipeline, one actor pool per expert: auto (RAY_ADDRESS or a running cluster, "
    "else a local one), local, or a cluster ADDRESS; paths may then also be URLs such as s3://bucket/dir"
)


class PathOrURL(click.Path):
    """An existing local path, or a URL (``s3://...``) that only Ray reads."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value:
            return value
        return super().convert(value, param, ctx)


def ray_option(f):
    """``--ray [auto|local|ADDRESS]`` (alone: auto)."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="auto",
        default=None,
        metavar="[auto|local|ADDRESS]",
        help=_RAY_HELP,
    )(f)


@click.command("batch")
@click.argument("paths", nargs=-1, required=True, type=PathOrURL(exists=True))
@click.option(
    "-e",
    "--experts",
    "experts_spec",
    metavar="LIST",
    help="experts to run, e.g. ocr,detect or detect:mode=measure (default: the fallback experts)",
)
@click.option("-q", "--question", help="also ask the model this about every image (its answer goes in the line)")
@click.option("--preset", help="run a preset's experts and question on every image (see `vision-router preset list`)")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False),
    help="JSONL file to append to (default: stdout); a .parquet name writes Parquet",
)
@click.option(
    "-w", "--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="images in flight at once"
)
@click.option("--resume", is_flag=True, help="skip images whose image_id is already in --out")
@click.option("--retry-failed", is_flag=True, help="with --resume: try the images that failed before again")
@click.option("-m", "--model", help="Ollama model for -q (default qwen3-vision)")
@click.option("--ollama-host", help="Ollama address (default OLLAMA_HOST, else 127.0.0.1:11434)")
@click.option("--no-cache", is_flag=True, help="do not read or write the on-disk result cache")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
@ray_option
@click.pass_context
def batch_command(
    ctx,
    paths,
    experts_spec,
    question,
    preset,
    out,
    workers,
    resume,
    retry_failed,
    model,
    ollama_host,
    no_cache,
    no_progress,
    ray_address,
):
    """Run experts (and with -q the model) on every image under PATHS; one JSON line per image.

    Folders are searched recursively; images are recognised by their content, not their names. A
    summary (done, failed, cached, seconds, cache hit rate) goes to stderr at the end.
    """
    from router.apps.batch import BatchSummary, parse_experts, run_batch
    from router.core.orchestrator import Orchestrator

    settings = settings_from(ctx, model=model, ollama_host=ollama_host, cache_dir="" if no_cache else None)
    specs = parse_experts(experts_spec)
    system = None
    if preset:
        from router.apps.presets import prepare

        prepared = prepare(preset, question)
        question, system = prepared.question, prepared.system
        specs = specs or list(prepared.experts)
    summary = BatchSummary()
    opts = dict(
        out=out,
        experts=specs,
        question=question,
        system=system,
        workers=workers,
        resume=resume,
        retry_failed=retry_failed,
        progress=not no_progress,
    )
    try:
        if ray_address:
            from functools import partial

            from router.apps.scale import run_batch_ray, without_scale_keys

            # Each Ray actor builds its own registry: hand it the function, not a registry.
            factory = partial(common.configured_registry, without_scale_keys(settings))
            summary = run_batch_ray(paths, settings, address=ray_address, registry_factory=factory, **opts)
        else:
            if any("://" in p for p in paths):
                raise click.UsageError("URLs (s3://...) are read by Ray: add --ray")
            orch = Orchestrator(settings, registry=common.configured_registry(settings))
            summary = run_batch(paths, orch, **opts)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: the lines written so far are complete; rerun with --resume{_out_hint(out)}", err=True
        )
        raise
    click.echo(summary.render(), err=True)
    if summary.failed and not summary.done:
        ctx.exit(1)


def _out_hint(out: str | None) -> str:
    return f" --out {out}" if out else " and --out FILE"

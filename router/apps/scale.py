"""Scale-out on Ray: ``batch`` and ``index`` as Ray Data pipelines, one actor pool per expert.

::

    vision-router batch photos/ --experts ocr,detect --out results.jsonl --ray local
    vision-router batch s3://bucket/catalogue/ --experts ocr --out results.parquet --ray ray://head:10001
    vision-router index scans/ --db http://qdrant:6333 --ray auto

The pipeline: image paths (local files, read by the workers, or any URL Ray's file readers take, such
as ``s3://``) -> intake tasks (stat first, read, hash, the same image limits, resume by image_id) ->
one actor pool per expert (``num_cpus``/``num_gpus``/``replicas`` from ``[experts.NAME]`` in the
config, so OCR fans out on CPUs while CLIP or BLIP-2 sit on GPUs; each actor loads its model once) ->
the driver, which makes each line with the same code as the local run (:func:`router.apps.batch.finish_line`),
writes it (JSONL or Parquet) and counts progress. With ``-q`` the model step is one more actor pool
(``--workers`` actors), each with its own router.

Ray Data retries the work of an actor that dies (``max_restarts=-1``, ``max_task_retries=-1``): a
killed worker costs time, not images. Each image's line is written once, by the driver.

Every node needs this package and the experts' extras installed (or a ``runtime_env``); local paths
must be readable at the same place on every node (a shared file system), or use a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from experts.errors import ExpertError, VisionRouterError
from experts.images import decode_image
from experts.install import install_hint
from experts.schema import ExpertResult
from router.apps.batch import (
    _IMAGE_SUFFIXES,
    _MAGIC,
    BatchSummary,
    ExpertSpec,
    LineSink,
    Seen,
    complete,
    failed_line,
    finish_line,
    iter_images,
    progress_bar,
    read_done,
    resolve_specs,
    take_in,
)
from router.core.dispatch import ExpertCall

log = logging.getLogger(__name__)

# Keys of ``[experts.NAME]`` read here (the router's, not the expert's own settings).
SCALE_KEYS = ("num_cpus", "num_gpus", "replicas")
INTAKE_CPUS = 0.25  # reading and hashing is light: it must not take the CPUs the experts need
RegistryFactory = Callable[[], Any]


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertResources:
    """What one expert's actors ask Ray for, and how many of them may run."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    replicas: int = 1


def expert_resources(settings: Any, name: str, overrides: dict[str, dict[str, Any]] | None = None) -> ExpertResources:
    """``[experts.NAME] num_cpus / num_gpus / replicas`` from the config (then ``overrides``), read
    leniently: a missing or unusable value keeps its default."""
    cfg = dict((getattr(settings, "experts", None) or {}).get(name) or {})
    cfg.update((overrides or {}).get(name) or {})
    base = ExpertResources()

    def num(key: str, default: float, lo: float) -> float:
        try:
            value = float(cfg.get(key, default))
        except (TypeError, ValueError):
            log.warning("[experts.%s] %s = %r is not a number: using %s", name, key, cfg.get(key), default)
            return default
        return max(lo, value)

    return ExpertResources(
        num_cpus=num("num_cpus", base.num_cpus, 0.0),
        num_gpus=num("num_gpus", base.num_gpus, 0.0),
        replicas=int(num("replicas", base.replicas, 1)),
    )


def without_scale_keys(settings: Any) -> Any:
    """``settings`` without the keys read here, so they never reach an expert's constructor."""
    experts = {n: {k: v for k, v in c.items() if k not in SCALE_KEYS} for n, c in settings.experts.items()}
    return settings.model_copy(update={"experts": experts})


def pinned(settings: Any) -> Any:
    """``settings`` with the cache folder resolved here: actors started by a raylet would otherwise read
    ``VISION_ROUTER_CACHE``/``XDG_CACHE_HOME`` from its environment, not from this process's."""
    return settings.model_copy(update={"cache_dir": settings.resolved_cache_dir() or ""})


def registry_for(settings: Any) -> Any:
    """The default registry with the configured expert settings (what the CLI uses), built where it
    runs: in each Ray actor."""
    from experts.registry import default_registry

    return without_scale_keys(settings).configure(default_registry())


def connect(address: str | None = "auto") -> None:
    """Join a Ray cluster: ``auto`` (``RAY_ADDRESS``, else a running local cluster, else a new local
    one), ``local`` (always a new local one) or an address (``ray://head:10001``, ``head:6379``)."""
    try:
        import ray
    except ImportError:
        raise VisionRouterError(f"--ray needs Ray: {install_hint('ray')}") from None
    if ray.is_initialized():
        return
    opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    address = address or "auto"
    try:
        if address == "auto" and not os.environ.get("RAY_ADDRESS"):
            try:
                ray.init(address="auto", **opts)
            except ConnectionError:
                ray.init(**opts)
        else:
            ray.init(address=None if address == "auto" else address, **opts)
    except Exception as exc:  # Ray raises many kinds; the user needs one line
        raise VisionRouterError(f"cannot start or reach Ray at {address}: {' '.join(str(exc).split())}") from None
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is per image, on the driver
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- the stages (run on Ray workers) ------------------------------------------------------------
def _is_url(p: str | Path) -> bool:
    return "://" in str(p)


def _looks_like_image(path: str, data: bytes) -> bool:
    head = data[:16]
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head[off : off + len(m)] == m for off, m in _MAGIC) or Path(path).suffix.lower() in _IMAGE_SUFFIXES


def intake_row(row: dict[str, Any], limits: dict[str, int], seen: Seen) -> dict[str, Any]:
    """Read (or take the bytes Ray read), check and hash one image; the row says what became of it."""
    t0 = time.perf_counter()
    path, data = row["path"], row.get("bytes")
    if data is not None and not _looks_like_image(path, data):
        return {"path": path, "line": "", "data": b"", "state": "drop", "t": 0.0}  # not an image, as in folders
    intake = take_in(path, limits, seen, data=data)
    state = "skip" if intake.skip else "error" if intake.image is None else "ok"
    if state == "error":
        failed_line(intake.line, intake.error or "unreadable")
    keep = intake.image.data if intake.image is not None else b""
    return {"path": path, "line": json.dumps(intake.line), "data": keep, "state": state, "t": time.perf_counter() - t0}


class ExpertStage:
    """One actor of an expert's pool: builds its router dispatcher (and the expert's model) once,
    then adds that expert's result to each row as JSON in column ``r<index>``."""

    def __init__(
        self, index: int, name: str, args: dict[str, Any], settings: Any, registry_factory: RegistryFactory
    ) -> None:
        from router.core.orchestrator import Orchestrator

        self.column = f"r{index}"
        self.name, self.args = name, args
        self.limits = settings.image_limits()
        self.dispatcher = Orchestrator(settings, registry=registry_factory()).dispatcher

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["state"] != "ok":
            row[self.column] = ""
            return row
        t0 = time.perf_counter()
        img = decode_image(row["data"], source=row["path"], **self.limits)
        (result,) = self.dispatcher.run_sync([ExpertCall(img, 1, self.name, self.args, source="batch")])
        row[self.column] = result.model_dump_json()
        row["t"] = row["t"] + time.perf_counter() - t0
        return row


class AskStage:
    """One actor of the ``-q`` pool: its own router asks the model about each image, experts included."""

    def __init__(
        self,
        settings: Any,
        registry_factory: RegistryFactory,
        specs: list[ExpertSpec],
        question: str,
        system: str | None,
    ) -> None:
        from router.core.orchestrator import Orchestrator

        self.orch = Orchestrator(settings, registry=registry_factory())
        self.limits = settings.image_limits()
        self.specs, self.question, self.system = specs, question, system

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["state"] != "ok":
            return row
        t0 = time.perf_counter()
        img = decode_image(row["data"], source=row["path"], **self.limits)
        line = json.loads(row["line"])
        asyncio.run(complete(line, img, self.orch, self.specs, self.question, self.system))
        row.update(line=json.dumps(line), state="done", t=row["t"] + time.perf_counter() - t0)
        return row


# --- the pipeline -------------------------------------------------------------------------------
def build_pipeline(
    sources: Sequence[str],
    settings: Any,
    specs: list[ExpertSpec],
    *,
    registry_factory: RegistryFactory,
    seen: Seen | None = None,
    question: str | None = None,
    system: str | None = None,
    workers: int = 2,
    resources: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The Ray Dataset of result rows for ``sources`` (local file paths and/or URLs)."""
    import ray.data

    local = [s for s in sources if not _is_url(s)]
    urls = [s for s in sources if _is_url(s)]
    parts = []
    if local:
        parts.append(
            ray.data.from_items([{"path": p, "bytes": None} for p in local], override_num_blocks=min(len(local), 200))
        )
    if urls:
        parts.append(ray.data.read_binary_files(urls, include_paths=True))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    ds = ds.map(intake_row, fn_kwargs={"limits": settings.image_limits(), "seen": seen or Seen()}, num_cpus=INTAKE_CPUS)
    if question is not None:
        return ds.map(
            AskStage,
            fn_constructor_kwargs={
                "settings": settings,
                "registry_factory": registry_factory,
                "specs": specs,
                "question": question,
                "system": system,
            },
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, workers)),
            num_cpus=0.5,
        )
    for i, ((name, args), res) in enumerate(zip(specs, fit_to_cluster(specs, settings, resources), strict=True)):
        ds = ds.map(
            ExpertStage,
            fn_constructor_kwargs={
                "index": i,
                "name": name,
                "args": args,
                "settings": settings,
                "registry_factory": registry_factory,
            },
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=res.replicas),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus or None,
        )
    return ds


def fit_to_cluster(
    specs: Sequence[ExpertSpec], settings: Any, resources: dict[str, dict[str, Any]] | None = None
) -> list[ExpertResources]:
    """Each expert's resources, checked against the cluster. One actor of every pool must fit beside the
    intake tasks, or Ray Data waits forever: CPU asks that do not fit are scaled down together (a
    2-core laptop runs ocr and detect at 0.875 CPU each), a GPU ask on a cluster without GPUs is an error."""
    import ray

    wanted = [expert_resources(settings, name, resources) for name, _ in specs]
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    for (name, _), res in zip(specs, wanted, strict=True):
        if res.num_gpus > gpus:
            raise VisionRouterError(
                f"expert {name} asks for {res.num_gpus:g} GPU per actor, the Ray cluster has {gpus:g}: "
                f"set [experts.{name}] num_gpus = 0 in the config, or add GPU nodes"
            )
    need = sum(r.num_cpus for r in wanted)
    budget = cpus - INTAKE_CPUS
    if need > budget > 0:
        factor = budget / need
        log.warning("experts ask for %.2f CPUs, the Ray cluster has %.2f: scaled by %.2f to fit", need, cpus, factor)
        wanted = [ExpertResources(r.num_cpus * factor, r.num_gpus, r.replicas) for r in wanted]
    return wanted


def line_of(row: dict[str, Any], n_experts: int) -> dict[str, Any] | None:
    """The finished line of a result row (None for an image resume skips)."""
    state = row["state"]
    if state == "skip":
        return None
    line = json.loads(row["line"])
    if state == "ok":
        results = [ExpertResult.model_validate_json(row[f"r{i}"]) for i in range(n_experts)]
        finish_line(line, results)
    line["seconds"] = round(float(row["t"]), 4)
    return line


def iter_lines(ds: Any, n_experts: int) -> Iterator[dict[str, Any] | None]:
    """Lines as the pipeline finishes them; an error in a stage that would fail every image (the model
    missing, Ollama unreachable) is raised as the router's own one-line error."""
    try:
        for row in ds.iter_rows():
            if row["state"] != "drop":  # dropped rather than filtered: a filter task would want a CPU of its own
                yield line_of(row, n_experts)
    except Exception as exc:
        cause = _router_error(exc)
        if cause is not None:
            raise cause from None
        raise


def _router_error(exc: BaseException) -> VisionRouterError | None:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, VisionRouterError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def sources_of(paths: Sequence[str | Path]) -> list[str]:
    """Local paths found as for the local run (by content, recursively); URLs passed on to Ray as given."""
    local = [p for p in paths if not _is_url(p)]
    return [str(p) for p in iter_images(local)] + [str(p) for p in paths if _is_url(p)]


def run_batch_ray(
    paths: Sequence[str | Path],
    settings: Any,
    *,
    address: str | None = "auto",
    out: str | Path | None = None,
    stream: IO[str] | None = None,
    experts: Sequence[str | ExpertSpec] | None = None,
    question: str | None = None,
    system: str | None = None,
    workers: int = 2,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    progress_file: IO[str] | None = None,
    registry_factory: RegistryFactory | None = None,
    resources: dict[str, dict[str, Any]] | None = None,
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """:func:`router.apps.batch.run_batch` on Ray: the same lines (timings aside), written by this
    process as the cluster finishes them. ``registry_factory`` builds the expert registry in each
    actor (default: the configured default registry); ``resources`` overrides the per-expert
    ``num_cpus``/``num_gpus``/``replicas`` of the config."""
    t0 = time.perf_counter()
    settings = pinned(settings)
    factory = registry_factory or partial(registry_for, settings)
    specs = resolve_specs(factory(), settings, experts, question)
    if resume and out is None:
        raise VisionRouterError("--resume needs --out FILE (the results of the earlier run)")
    sources = sources_of(paths)
    local_only = not any(_is_url(s) for s in sources)
    summary = BatchSummary(total=len(sources) if local_only else 0, out=str(out) if out else None)
    seen = read_done(Path(out), retry_failed) if resume and out else Seen()
    sink = LineSink(out, stream, on_line)
    bar = progress_bar(len(sources) if local_only else None, progress, progress_file, desc="batch (ray)")
    try:
        connect(address)
        if sources:
            ds = build_pipeline(
                sources,
                settings,
                specs,
                registry_factory=factory,
                seen=seen,
                question=question,
                system=system,
                workers=workers,
                resources=resources,
            )
            _drain(iter_lines(ds, len(specs) if question is None else 0), summary, sink, bar)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        sink.close()
        summary.seconds = time.perf_counter() - t0
    if not local_only:
        summary.total = summary.done + summary.failed + summary.skipped
    return summary


def _drain(lines: Iterator[dict[str, Any] | None], summary: BatchSummary, sink: LineSink, bar: Any) -> None:
    for line in lines:
        if line is None:
            summary.skipped += 1
        else:
            summary.tally(line)
            notes = (line.get("experts") or {}).values()
            hits = sum(1 for n in notes if n.get("cached"))
            summary.cache_hits += hits
            summary.cache_misses += len(notes) - hits
            sink.write(line)
        bar.update(1)


# --- index --------------------------------------------------------------------------------------
def ray_analyser(
    settings: Any,
    address: str | None = "auto",
    *,
    registry_factory: RegistryFactory | None = None,
    resources: dict[str, dict[str, Any]] | None = None,
) -> Callable[..., Iterator[tuple[str, Any]]]:
    """For ``index --ray``: a function ``(paths, names) -> (path, line with results)`` pairs that runs
    the experts of the images to index on the cluster (the index itself is written by this process)."""
    settings = pinned(settings)
    factory = registry_factory or partial(registry_for, settings)

    def analyse(paths: Sequence[str], names: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], list]]:
        specs: list[ExpertSpec] = [(n, {}) for n in names]
        if not paths:
            return
        connect(address)
        ds = build_pipeline(list(paths), settings, specs, registry_factory=factory, resources=resources)
        try:
            for row in ds.iter_rows():
                if row["state"] == "drop":
                    continue
                line = json.loads(row["line"])
                results = (
                    [ExpertResult.model_validate_json(row[f"r{i}"]) for i in range(len(specs))]
                    if row["state"] == "ok"
                    else []
                )
                yield row["path"], line, results
        except Exception as exc:
            cause = _router_error(exc)
            if cause is not None:
                raise cause from None
            raise ExpertError(f"Ray pipeline failed: {' '.join(str(exc).split())[:300]}") from None

    return analyse

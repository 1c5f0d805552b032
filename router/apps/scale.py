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
killed worker, or a lost node, costs time, not images. Each image's line is written once, by the driver.

Resources are planned per node, not against the cluster's total: a cluster is many small nodes, and an
actor runs on one. One actor of every pool must fit on the nodes alive at the start (packed, biggest
first), or the asks are scaled down together; an ask that no node can meet is one error line at once.
Intake asks for no CPU, so it always runs beside actors that fill their nodes (the driver does the
writing). An actor that still cannot start (a node lost, a packing Ray did not find) says so within
``start_timeout`` seconds, and a run where nothing moves prints what waits for which resources.

Every node needs this package and the experts' extras installed (or a ``runtime_env``); local paths
must be readable at the same place on every node (a shared file system), or use a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
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
# Reading and hashing is light, and any CPU ask can be starved on nodes whose CPUs the expert actors
# fill (2 nodes x 1 CPU with two experts hung at 0/N): intake asks for none, its concurrency is capped.
INTAKE_CPUS = 0.0
ASK_CPUS = 0.5  # one actor of the -q pool: it waits on the model more than it computes
START_TIMEOUT_S = 120.0  # how long an actor pool may wait for room on the nodes before the run fails
NOTICE_S = 15.0  # no image finished for this long: say what waits for which resources
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
    if ray.is_initialized():  # the caller joined a cluster itself: only Ray Data's own output is turned down
        _quiet_ray_data()
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
        msg = " ".join(str(exc).split())
        if "Failed to connect" in msg and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            # Without the token a node with token auth (Ray's default from 2.60) only looks unreachable.
            msg += (
                "; if the cluster uses token auth, set RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token from the head: `ray get-auth-token` there prints it)"
            )
        raise VisionRouterError(f"cannot start or reach Ray at {address}: {msg}") from None
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is per image, on the driver
    ctx.print_on_execution_start = False
    # Ray Data logs a failed start's stack trace as its own internal error; the run says it in one line.
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)
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
    start_timeout: float = START_TIMEOUT_S,
) -> Any:
    """The Ray Dataset of result rows for ``sources`` (local file paths and/or URLs), its actor pools
    planned against the nodes alive now (:func:`plan_pools`)."""
    import ray.data

    nodes = alive_nodes()
    # An actor pool whose first actor finds no room fails the run after this long, rather than waiting
    # for ever (Ray Data's default); the driver's own watch says what waits meanwhile.
    ray.data.DataContext.get_current().wait_for_min_actors_s = max(1, int(start_timeout))
    light = {"num_cpus": INTAKE_CPUS, "compute": ray.data.TaskPoolStrategy(size=max(2, len(nodes)))}
    local = [s for s in sources if not _is_url(s)]
    urls = [s for s in sources if _is_url(s)]
    parts = []
    if local:
        parts.append(
            ray.data.from_items([{"path": p, "bytes": None} for p in local], override_num_blocks=min(len(local), 200))
        )
    if urls:
        reads = {"num_cpus": INTAKE_CPUS, "concurrency": max(2, len(nodes))}
        parts.append(ray.data.read_binary_files(urls, include_paths=True, **reads))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    ds = ds.map(intake_row, fn_kwargs={"limits": settings.image_limits(), "seen": seen or Seen()}, **light)
    if question is not None:
        (pool,) = plan_pools(["the -q model step"], [ExpertResources(ASK_CPUS, 0.0, max(1, workers))], nodes)
        return ds.map(
            AskStage,
            fn_constructor_kwargs={
                "settings": settings,
                "registry_factory": registry_factory,
                "specs": specs,
                "question": question,
                "system": system,
            },
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.replicas),
            num_cpus=pool.num_cpus,
        )
    names = [name for name, _ in specs]
    planned = plan_pools(names, [expert_resources(settings, n, resources) for n in names], nodes)
    # Biggest ask first: Ray Data starts the pools in this order and spreads their actors over the
    # nodes with room, so the big actors find a node while most room is free (the columns keep the
    # experts' order).
    order = sorted(range(len(specs)), key=lambda i: (planned[i].num_gpus, planned[i].num_cpus), reverse=True)
    for i in order:
        (name, args), res = specs[i], planned[i]
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


# --- planning per node --------------------------------------------------------------------------
_EPS = 1e-9
_SHOWN = ("CPU", "GPU")  # what the lines below name; memory and node: labels are Ray's own business


@dataclass(frozen=True)
class NodeOffer:
    """What one alive node offers Ray's tasks and actors in all (not what is free now)."""

    address: str
    cpus: float
    gpus: float = 0.0

    def __str__(self) -> str:
        gpus = f" + {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU{gpus} ({self.address})"


def alive_nodes() -> list[NodeOffer]:
    """The cluster's alive nodes and their CPUs/GPUs (``ray.nodes()``)."""
    import ray

    return [
        NodeOffer(
            str(n.get("NodeManagerAddress") or n.get("NodeID", "?")[:8]),
            float((n.get("Resources") or {}).get("CPU", 0.0)),
            float((n.get("Resources") or {}).get("GPU", 0.0)),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def describe_nodes(nodes: Sequence[NodeOffer]) -> str:
    """``1 CPU (10.0.0.1), 2 CPU + 1 GPU (10.0.0.2)``: what a one-line error shows of the cluster."""
    return ", ".join(str(n) for n in nodes) or "no alive node"


def _ask(res: ExpertResources) -> str:
    gpus = f" + {res.num_gpus:g} GPU" if res.num_gpus else ""
    return f"{res.num_cpus:g} CPU{gpus}"


def _fits(free: list[float], res: ExpertResources) -> bool:
    return free[0] + _EPS >= res.num_cpus and free[1] + _EPS >= res.num_gpus


def _take(free: list[list[float]], res: ExpertResources) -> bool:
    """Place one actor on the first node with room (``free`` is changed); False when none has."""
    for f in free:
        if _fits(f, res):
            f[0] -= res.num_cpus
            f[1] -= res.num_gpus
            return True
    return False


def pack(asks: Sequence[ExpertResources], nodes: Sequence[NodeOffer]) -> list[list[float]] | None:
    """One actor per ask, biggest first, each on the first node with room: the free ``[cpus, gpus]``
    per node afterwards, or None when some actor finds no room."""
    free = [[n.cpus, n.gpus] for n in nodes]
    for res in sorted(asks, key=lambda r: (r.num_gpus, r.num_cpus), reverse=True):
        if not _take(free, res):
            return None
    return free


def _scaled(asks: Sequence[ExpertResources], factor: float) -> list[ExpertResources]:
    return [ExpertResources(r.num_cpus * factor, r.num_gpus, r.replicas) for r in asks]


def _unmet(name: str, res: ExpertResources, nodes: Sequence[NodeOffer]) -> VisionRouterError | None:
    """The one-line error for an actor ask that no single node can meet (None when one can)."""
    if any(_fits([n.cpus, n.gpus], res) for n in nodes):
        return None
    if not any(n.gpus + _EPS >= res.num_gpus for n in nodes):
        fix = f"set [experts.{name}] num_gpus = 0 (or a fraction) in the config, or add GPU nodes"
        return VisionRouterError(
            f"expert {name} asks for {res.num_gpus:g} GPU per actor, no Ray node has that many "
            f"(nodes: {describe_nodes(nodes)}): {fix}"
        )
    most = max(n.cpus for n in nodes if n.gpus + _EPS >= res.num_gpus)
    return VisionRouterError(
        f"expert {name} asks for {_ask(res)} per actor, no Ray node has that much "
        f"(nodes: {describe_nodes(nodes)}): set [experts.{name}] num_cpus to at most {most:g} in the config, "
        "or add a bigger node"
    )


def plan_pools(
    names: Sequence[str], wanted: Sequence[ExpertResources], nodes: Sequence[NodeOffer]
) -> list[ExpertResources]:
    """Each pool's actor ask and size, planned against what each node offers (an actor runs on one
    node, so the cluster's total says nothing). An ask no node can meet is an error; one actor of every
    pool must pack onto the nodes, or the CPU asks are scaled down together (one 1-CPU laptop runs ocr
    and detect at 0.5 CPU each); ``replicas`` is capped at the actors that fit beside the others."""
    if not nodes:
        raise VisionRouterError("the Ray cluster has no alive node")
    for name, res in zip(names, wanted, strict=True):
        err = _unmet(name, res, nodes)
        if err is not None:
            raise err
    factor = 1.0
    if pack(wanted, nodes) is None:
        if pack(_scaled(wanted, 0.0), nodes) is None:  # the GPUs do not go round, whatever the CPUs
            asks = ", ".join(f"{n} {_ask(r)}" for n, r in zip(names, wanted, strict=True))
            raise VisionRouterError(
                f"one actor of each expert ({asks}) does not fit on the Ray nodes ({describe_nodes(nodes)}): "
                "lower [experts.NAME] num_gpus (a fraction shares a GPU), or add GPU nodes"
            )
        lo, hi = 0.0, 1.0
        for _ in range(30):  # the largest factor that packs
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if pack(_scaled(wanted, mid), nodes) is not None else (lo, mid)
        factor = lo
        asks = ", ".join(f"{n} {_ask(r)}" for n, r in zip(names, wanted, strict=True))
        log.warning(
            "one actor of each expert (%s) does not fit on the Ray nodes (%s): CPU asks scaled by %.2f",
            asks,
            describe_nodes(nodes),
            factor,
        )
    planned = _scaled(wanted, factor)
    free = pack(planned, nodes) or []
    counts = [1] * len(planned)
    grew = True
    while grew:  # round robin, so that one expert does not take all the room
        grew = False
        for i, res in enumerate(planned):
            if counts[i] < res.replicas and _take(free, res):
                counts[i] += 1
                grew = True
    for name, res, n in zip(names, planned, counts, strict=True):
        if n < res.replicas:
            log.warning("expert %s: %d actors asked, the Ray nodes fit %d beside the others", name, res.replicas, n)
    return [ExpertResources(r.num_cpus, r.num_gpus, n) for r, n in zip(planned, counts, strict=True)]


def _resources_text(res: dict[str, float]) -> str:
    shown = {k: v for k, v in res.items() if k in _SHOWN or not (k.startswith("node:") or "memory" in k)}
    return " + ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "nothing"


@dataclass(frozen=True)
class Waiting:
    """What waits for resources on the cluster now (Ray's pending demands), in one line."""

    line: str
    impossible: bool  # some ask fits no alive node at all: waiting will not help


def waiting_for() -> Waiting | None:
    """Ray's pending task/actor demands against what each node has free (as ``ray status`` shows
    them); None when nothing waits, or when Ray cannot tell (a ``ray://`` client)."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:  # best effort: this only words a message
        return None
    asks = [
        (dict(b.bundle), b.count)
        for d in list(status.resource_demands.ray_task_actor_demand)
        + list(status.resource_demands.placement_group_demand)
        for b in getattr(d, "bundles_by_count", [])
    ]
    if not asks:
        return None
    nodes = list(status.active_nodes) + list(status.idle_nodes)
    totals = [dict(n.total_resources()) for n in nodes]

    def fits_somewhere(bundle: dict[str, float]) -> bool:
        return any(all(t.get(k, 0.0) + _EPS >= v for k, v in bundle.items()) for t in totals)

    wanted = ", ".join(f"{n} x {_resources_text(b)}" for b, n in asks)
    offer = ", ".join(
        f"{_resources_text({k: v for k, v in dict(n.available_resources()).items() if k in _SHOWN})} free of "
        f"{_resources_text({k: v for k, v in t.items() if k in _SHOWN})} ({n.ip_address})"
        for n, t in zip(nodes, totals, strict=True)
    )
    impossible = not all(fits_somewhere(b) for b, _ in asks)
    return Waiting(f"{wanted}; nodes: {offer or 'no alive node'}", impossible)


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


def iter_lines(ds: Any, n_experts: int, start_timeout: float = START_TIMEOUT_S) -> Iterator[dict[str, Any] | None]:
    """Lines as the pipeline finishes them; an error in a stage that would fail every image (the model
    missing, Ollama unreachable) is raised as the router's own one-line error."""
    try:
        for row in watched_rows(ds, start_timeout):
            if row["state"] != "drop":  # dropped rather than filtered: a filter task would want a CPU of its own
                yield line_of(row, n_experts)
    except Exception as exc:
        cause = _router_error(exc)
        if cause is not None:
            raise cause from None
        raise


def watched_rows(
    ds: Any, start_timeout: float = START_TIMEOUT_S, notice_s: float | None = None
) -> Iterator[dict[str, Any]]:
    """``ds.iter_rows()``, read on a thread so that this one can watch: when no row came for
    ``notice_s`` and something waits for resources, a warning says what waits and what the nodes have
    free; an actor pool that cannot start within ``start_timeout``, or an ask that fits no alive node
    for that long, ends the run with one line instead of a hang."""
    rows: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=16)
    stop = threading.Event()

    def pump() -> None:
        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    rows.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for row in ds.iter_rows():
                if not put(("row", row)):
                    return  # the reader left: leaving the loop closes Ray Data's iterator
            put(("end", None))
        except BaseException as exc:  # handed to the reading thread, which raises it
            put(("error", exc))

    notice_s = NOTICE_S if notice_s is None else notice_s
    threading.Thread(target=pump, name="vision-router-ray-rows", daemon=True).start()
    last = time.monotonic()
    say_at = notice_s  # idle seconds before the next warning: once, then every minute
    finished = False
    try:
        while True:
            try:
                kind, item = rows.get(timeout=1.0)
            except queue.Empty:
                idle = time.monotonic() - last
                if idle >= notice_s:  # stalled: ask Ray each second what waits (one cheap GCS call)
                    say_at = _notice(idle, start_timeout, say_at, notice_s)
                continue
            if kind == "row":
                last, say_at = time.monotonic(), notice_s
                yield item
            elif kind == "end":
                finished = True
                return
            else:
                raise _start_error(item, start_timeout) or item
    finally:
        stop.set()
        if not finished:
            _shut_down(ds)


def _shut_down(ds: Any) -> None:
    """Stop a pipeline this process leaves before its end (an error, a stall that cannot end): its
    executor would otherwise keep the cluster's actors until the process exits. Ray Data keeps the
    executor of a running ``iter_rows`` on the Dataset (private; best effort)."""
    executor = getattr(ds, "_current_executor", None)
    if executor is not None:
        try:
            executor.shutdown(force=True)
        except Exception as exc:  # best effort: the error being raised matters more
            log.debug("could not stop the Ray Data executor: %s", exc)


def _notice(idle: float, start_timeout: float, say_at: float, notice_s: float) -> float:
    """Warn about what waits for resources when it is time to (returns when to say it next); an ask
    that fits no alive node for ``start_timeout`` ends the run (a lost node that nothing replaces)."""
    waiting = waiting_for()
    if waiting is None:
        return say_at
    if waiting.impossible and idle >= start_timeout:
        raise VisionRouterError(f"the Ray pipeline cannot go on, an ask fits no alive node: {waiting.line}")
    if idle < say_at:
        return say_at
    log.warning("no image finished for %.0f s; waiting for resources: %s", idle, waiting.line)
    return idle + max(notice_s, 60.0)


def _start_error(exc: BaseException, start_timeout: float) -> VisionRouterError | None:
    """Ray Data's timeout on an actor pool that found no room, as one line naming what waits."""
    if "Timed out while starting actors" not in str(exc):
        return None
    waiting = waiting_for()
    what = waiting.line if waiting else f"nodes: {describe_nodes(alive_nodes())}"
    return VisionRouterError(f"the experts' Ray actors found no room within {start_timeout:g} s: {what}")


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
    start_timeout: float = START_TIMEOUT_S,
) -> BatchSummary:
    """:func:`router.apps.batch.run_batch` on Ray: the same lines (timings aside), written by this
    process as the cluster finishes them. ``registry_factory`` builds the expert registry in each
    actor (default: the configured default registry); ``resources`` overrides the per-expert
    ``num_cpus``/``num_gpus``/``replicas`` of the config; ``start_timeout``: how long an actor pool may
    wait for room on the nodes before the run fails with one line."""
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
                start_timeout=start_timeout,
            )
            _drain(iter_lines(ds, len(specs) if question is None else 0, start_timeout), summary, sink, bar)
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
    start_timeout: float = START_TIMEOUT_S,
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
        ds = build_pipeline(
            list(paths), settings, specs, registry_factory=factory, resources=resources, start_timeout=start_timeout
        )
        try:
            for row in watched_rows(ds, start_timeout):
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

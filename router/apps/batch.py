"""Batch runs: every image under some folders through the experts (and the model), one record each.

::

    vision-router batch photos/ scans/ --experts ocr,detect --out results.jsonl --workers 4
    vision-router batch catalogue/ -q "What product is this?" --out answers.jsonl --resume
    vision-router batch catalogue/ --experts ocr --out results.parquet --ray auto   # see router.apps.scale

Images are found by their content (magic bytes), not their names. Each image becomes one line, written
and flushed as soon as it is done, so an interrupted run leaves a valid JSONL file and ``--resume``
carries on where it stopped. A bad image is a failed line with its error, never the end of the run.
Expert results go through the router's on-disk cache: a second run over the same images is served
from it, and the summary says how much.

The record of one image is made by :func:`take_in` (read, check, decode) and :func:`finish_line`
(expert results and answer to a line); the local run here and the Ray pipeline both use them, so
their records are the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from experts.errors import ExpertError, ImageError, VisionRouterError
from experts.images import DecodedImage, decode_image, image_id_of
from experts.install import install_hint
from experts.schema import ExpertResult, ImageAnalysis
from router.core.dispatch import ExpertCall
from router.core.errors import ModelNotFound, OllamaUnreachable

# Magic bytes of the formats experts.images accepts.
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"\xff\xd8\xff"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"II*\x00"),
    (0, b"MM\x00*"),
    (0, b"BM"),
)
# A file with one of these names is reported when it is not an image (the user expects it to be one);
# any other non-image file is skipped silently.
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mpo"}
NO_ANSWER = "the model gave no answer"

ExpertSpec = tuple[str, dict[str, Any]]


# --- reading files ------------------------------------------------------------------------------
class FileRefused(ImageError):
    """A path that is not a regular file of an acceptable size, or that could not be read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _check_stat(path: str | Path, st: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused(path, "is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the read forever, /dev/zero would fill memory: never opened as data.
        raise FileRefused(path, "not a regular file (FIFOs, devices and sockets are never read)")
    if st.st_size > max_bytes:
        raise FileRefused(path, f"image is {_mib(st.st_size)}, over the {_mib(max_bytes)} limit")


def read_image_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked by ``stat`` before it is opened
    (and by ``fstat`` on the open file, in case the path changed in between). Raises :class:`FileRefused`."""
    try:
        _check_stat(path, os.stat(path), max_bytes)
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it cannot hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            _check_stat(path, os.fstat(f.fileno()), max_bytes)
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise FileRefused(path, exc.strerror or str(exc)) from None
    if len(data) > max_bytes:  # it grew after the stat
        raise FileRefused(path, f"image is over the {_mib(max_bytes)} limit")
    return data


def sniff_image(path: str | Path) -> bool:
    """Whether a regular file starts like an image this project decodes (PNG, JPEG, GIF, WebP, BMP, TIFF)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            head = f.read(16)
    except OSError:
        return False
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head[off : off + len(m)] == m for off, m in _MAGIC)


def iter_images(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Images under ``paths``, recursively and in a stable order. A file named on the command line is
    always yielded (a non-image, or a FIFO or device, then becomes a failed line); inside folders, regular
    files are chosen by their magic bytes, plus image-named files that turn out not to be images."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    f = Path(root) / name
                    if f.is_file() and (sniff_image(f) or f.suffix.lower() in _IMAGE_SUFFIXES):
                        yield f
        elif p.exists():
            yield p
        else:
            raise VisionRouterError(f"{p}: no such file or folder")


def parse_experts(spec: str | None) -> list[ExpertSpec]:
    """``"ocr,detect"`` -> ``[("ocr", {}), ("detect", {})]``; ``detect:mode=measure`` passes an argument
    (several as ``clip:query=monet:top_k=3``)."""
    out: list[ExpertSpec] = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, *kvs = part.split(":")
        args: dict[str, Any] = {}
        for kv in kvs:
            k, sep, v = kv.partition("=")
            if not sep or not k.strip():
                raise VisionRouterError(f"--experts {part!r}: expected NAME or NAME:KEY=VALUE")
            args[k.strip()] = v
        out.append((name.strip(), args))
    return out


# --- results ------------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What a batch run did: counts, time and the cache's share."""

    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0  # images whose every expert result came from the cache
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    saved_ms: float = 0.0  # expert time the cache hits stood in for (their original timings)
    interrupted: bool = False
    out: str | None = None

    @property
    def hit_rate(self) -> float:
        n = self.cache_hits + self.cache_misses
        return self.cache_hits / n if n else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "hit_rate": round(self.hit_rate, 4),
            "saved_s": round(self.saved_ms / 1000, 3),
            "interrupted": self.interrupted,
        }

    def render(self) -> str:
        n = self.done + self.failed
        per = f" ({self.seconds / n:.2f} s/image)" if n else ""
        head = "batch interrupted" if self.interrupted else "batch"
        lines = [
            f"{head}: {self.done} done, {self.failed} failed, {self.skipped} skipped (already in the output), "
            f"{self.cached} served from cache; {self.seconds:.1f} s{per}"
        ]
        if self.cache_hits + self.cache_misses:
            lines.append(
                f"cache: {self.cache_hits} hits / {self.cache_misses} misses = {self.hit_rate:.0%} hit rate, "
                f"~{self.saved_ms / 1000:.1f} s of expert time saved"
            )
        if self.out:
            lines.append(f"results: {self.out}")
        return "\n".join(lines)

    def tally(self, line: dict[str, Any]) -> None:
        """Count one written line."""
        notes = (line.get("experts") or {}).values()
        self.saved_ms += sum(n.get("timing_ms", 0.0) for n in notes if n.get("cached"))
        if line.get("status") == "ok":
            self.done += 1
            self.cached += bool(line.get("cached"))
        else:
            self.failed += 1


@dataclass
class Seen:
    """Image ids (and, for unreadable files, paths) already in the output."""

    ids: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)

    def add(self, line: Any, retry_failed: bool) -> None:
        if not isinstance(line, dict) or (retry_failed and line.get("status") != "ok"):
            return
        if line.get("image_id"):
            self.ids.add(line["image_id"])
        elif line.get("path"):
            self.paths.add(str(line["path"]))


_Seen = Seen  # the name earlier versions used


def read_done(out: Path, retry_failed: bool = False) -> Seen:
    """What an earlier run already wrote (JSONL, or Parquet plus its journal); a torn last line (from a
    hard kill) is ignored."""
    seen = Seen()
    out = Path(out)
    if is_parquet(out):
        for row in _read_parquet_rows(out):
            seen.add(row, retry_failed)
        out = _journal_of(out)
    if not out.exists():
        return seen
    with open(out, encoding="utf-8") as f:
        for raw in f:
            try:
                seen.add(json.loads(raw), retry_failed)
            except json.JSONDecodeError:
                continue
    return seen


# --- output: JSONL, or Parquet through a JSONL journal ---------------------------------------------
# Parquet is written whole at the end (its footer comes last), so the lines go to a journal next to it
# first: a killed run loses nothing, and the next run (with --resume) folds the journal in.
PARQUET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("path", "string"),
    ("image_id", "string"),
    ("width", "int64"),
    ("height", "int64"),
    ("format", "string"),
    ("experts", "json"),
    ("result", "json"),
    ("answer", "string"),
    ("cached", "bool"),
    ("status", "string"),
    ("error", "string"),
    ("seconds", "float64"),
)


def is_parquet(out: str | Path | None) -> bool:
    return out is not None and Path(out).suffix.lower() == ".parquet"


def _journal_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VisionRouterError(
            f"Parquet output needs pyarrow: {install_hint('ray')} (or pip install pyarrow)"
        ) from None
    return pa, pq


def _read_parquet_rows(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    _, pq = _pyarrow()
    try:
        rows = pq.read_table(out).to_pylist()
    except Exception as exc:  # not our file, or not Parquet at all
        raise VisionRouterError(f"{out}: cannot read it as Parquet: {' '.join(str(exc).split())}") from None
    for row in rows:
        for name, kind in PARQUET_COLUMNS:
            if kind == "json" and isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
    return rows


def write_parquet(out: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Lines (as written to JSONL) as one Parquet file; nested ``experts``/``result`` are JSON strings."""
    pa, pq = _pyarrow()
    types = {
        "string": pa.string(),
        "json": pa.string(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in PARQUET_COLUMNS])
    rows = [
        {
            name: (
                json.dumps(line[name], ensure_ascii=False)
                if kind == "json" and line.get(name) is not None
                else line.get(name)
            )
            for name, kind in PARQUET_COLUMNS
        }
        for line in lines
    ]
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, out)  # readers never see half a file


def _open_for_append(out: Path) -> IO[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_size:
        _mend_last_line(out)
    return open(out, "a", encoding="utf-8")


def _mend_last_line(out: Path) -> None:
    """A run killed mid-write leaves a last line without its newline. Torn JSON is cut off (it would leave
    the file invalid JSONL, and that image is run again anyway); a whole JSON line that only lacks its
    newline gets one."""
    with open(out, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the start of the last line, reading backwards in blocks.
        start, pos = 0, size
        while pos > 0:
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                start = pos + cut + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail)
        except ValueError:  # torn: drop it
            f.truncate(start)
            return
        f.seek(0, os.SEEK_END)
        f.write(b"\n")


class LineSink:
    """Where lines go: a JSONL file (appended, one flushed write per line), a stream, or a Parquet file
    through its journal. ``close`` writes the Parquet file."""

    def __init__(
        self,
        out: str | Path | None,
        stream: IO[str] | None = None,
        on_line: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.out = Path(out) if out is not None else None
        self.on_line = on_line
        if self.out is not None and is_parquet(self.out):
            _pyarrow()  # fail before any work when pyarrow is missing
            self.file: IO[str] = _open_for_append(_journal_of(self.out))
        elif self.out is not None:
            self.file = _open_for_append(self.out)
        else:
            self.file = stream or sys.stdout

    def write(self, line: dict[str, Any]) -> None:
        # One write per line, then flush: an interrupted run leaves whole lines only.
        self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.on_line is not None:
            self.on_line(line)

    def close(self) -> None:
        if self.out is None:
            self.file.flush()
            return
        self.file.close()
        if is_parquet(self.out):
            journal = _journal_of(self.out)
            lines = _read_parquet_rows(self.out) + [json.loads(x) for x in _whole_lines(journal)]
            write_parquet(self.out, lines)
            journal.unlink()


def _whole_lines(path: Path) -> list[str]:
    out = []
    for raw in path.read_text("utf-8").splitlines():
        try:
            json.loads(raw)
        except json.JSONDecodeError:
            continue  # a torn line from a hard kill
        out.append(raw)
    return out


# --- one image's record -------------------------------------------------------------------------
@dataclass
class Intake:
    """One file read, checked and decoded: the start of its line, and its image or why not."""

    line: dict[str, Any]
    image: DecodedImage | None = None
    error: str | None = None
    skip: bool = False  # already in the output (resume)


def take_in(path: str | Path, limits: dict[str, int], seen: Seen | None = None, data: bytes | None = None) -> Intake:
    """Read (stat first), hash and decode one image under ``limits``; ``seen`` marks what to skip.
    ``data``: the bytes, when something else read them (Ray reading an ``s3://`` URL)."""
    seen = seen or Seen()
    line: dict[str, Any] = {"path": str(path), "image_id": None}
    try:
        if data is None:
            data = read_image_file(path, limits.get("max_bytes", 64 * 1024 * 1024))
    except FileRefused as exc:
        return Intake(line, error=str(exc), skip=str(path) in seen.paths)
    line["image_id"] = image_id = image_id_of(data)
    if image_id in seen.ids:
        return Intake(line, skip=True)
    try:
        img = decode_image(data, source=str(path), **limits)
    except ImageError as exc:
        return Intake(line, error=str(exc))
    line.update(width=img.width, height=img.height, format=img.format)
    return Intake(line, image=img)


def failed_line(line: dict[str, Any], error: str) -> dict[str, Any]:
    """Mark a line as failed with its one-line error."""
    line["status"] = "error"
    line["error"] = error
    return line


def finish_line(
    line: dict[str, Any], results: Sequence[ExpertResult], *, answer: str | None = None, answered: bool = True
) -> dict[str, Any]:
    """Complete a line from its expert results (and the model's answer): merged result, per-expert
    notes, status. A line whose experts all failed, or whose question got no answer, is an error line
    that keeps what was found."""
    width, height = line.get("width"), line.get("height")
    analysis = ImageAnalysis.merge(line["image_id"], 1, list(results), width, height)
    line["experts"] = {r.expert: _expert_note(r) for r in results}
    line["result"] = analysis.model_dump(mode="json", exclude={"results", "index", "image_id"})
    if answer is not None:
        line["answer"] = answer
    line["cached"] = bool(results) and all(r.cached for r in results)
    if results and not any(not r.error for r in results):
        errors = "; ".join(f"{r.expert}: {r.error}" for r in results)
        return failed_line(line, f"every expert failed: {errors}")
    if not answered:
        return failed_line(line, NO_ANSWER)
    line["status"] = "ok"
    line["error"] = None
    return line


def _expert_note(r: ExpertResult) -> dict[str, Any]:
    note: dict[str, Any] = {"timing_ms": round(r.timing_ms, 1), "cached": r.cached}
    if r.args:
        note["args"] = r.args
    if r.error:
        note["error"] = r.error
    return note


def ask_messages(question: str, system: str | None, img: DecodedImage) -> list[dict[str, Any]]:
    """The chat a ``-q`` batch sends for one image."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question, "images": [img]})
    return messages


async def record_of(
    path: str | Path,
    orch: Any,
    specs: Sequence[ExpertSpec],
    question: str | None,
    system: str | None,
    seen: Seen | None = None,
) -> dict[str, Any] | None:
    """The whole line for one image (None when resume skips it): read, experts, model. Raises only
    for what would fail every image (model missing, Ollama unreachable)."""
    t0 = time.perf_counter()
    intake = await asyncio.to_thread(take_in, path, orch.settings.image_limits(), seen)
    if intake.skip:
        return None
    line, img = intake.line, intake.image
    if img is None:
        failed_line(line, intake.error or "unreadable")
    else:
        await complete(line, img, orch, specs, question, system)
    line["seconds"] = round(time.perf_counter() - t0, 4)
    return line


async def complete(
    line: dict[str, Any],
    img: DecodedImage,
    orch: Any,
    specs: Sequence[ExpertSpec],
    question: str | None,
    system: str | None,
) -> dict[str, Any]:
    """Run the experts (or, with a question, the router and the model) on a decoded image and
    finish its line."""
    if question is None:
        calls = [ExpertCall(img, 1, name, args, source="batch") for name, args in specs]
        return finish_line(line, await orch.dispatcher.run_all(calls))
    try:
        final = await orch.achat(ask_messages(question, system, img), experts=specs)
    except (ModelNotFound, OllamaUnreachable):
        raise  # every image would fail the same way: stop the run with that one line
    except VisionRouterError as exc:
        return failed_line(line, str(exc))
    results = [r for a in final.analyses for r in a.results]
    return finish_line(line, results, answer=final.answer, answered=final.answered)


# --- the run ------------------------------------------------------------------------------------
def resolve_specs(
    registry: Any, settings: Any, experts: Sequence[str | ExpertSpec] | None, question: str | None
) -> list[ExpertSpec]:
    """The experts a batch runs, checked once: named ones (unknown names and bad arguments fail now),
    else the installed fallback experts when there is no question (with one, the router decides)."""
    specs = [(e, {}) if isinstance(e, str) else (e[0], dict(e[1])) for e in experts or ()]
    for name, args in specs:
        registry.get(name).parse_args(args)
    if not specs and question is None:
        specs = [(n, {}) for n in settings.fallback if registry.resolve(n)]
        if not specs:
            raise ExpertError("no experts to run: name some with --experts (see `vision-router expert list`)")
    return specs


def run_batch(
    paths: Sequence[str | Path],
    orchestrator: Any,
    *,
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
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Run experts (and, with ``question``, the model) on every image under ``paths``.

    Lines go to ``out`` (appended, flushed one by one; a ``.parquet`` name writes Parquet) or to
    ``stream`` (default stdout). ``experts`` defaults to the orchestrator's fallback experts that are
    installed when no question is given; with a question and no experts, the router decides as for
    ``ask``. Raises :class:`VisionRouterError` only for problems that would fail every image (unknown
    expert, Ollama unreachable, model missing).
    """
    t0 = time.perf_counter()
    specs = resolve_specs(orchestrator.registry, orchestrator.settings, experts, question)
    if resume and out is None:
        raise VisionRouterError("--resume needs --out FILE (the results of the earlier run)")

    files = list(iter_images(paths))
    summary = BatchSummary(total=len(files), out=str(out) if out else None)
    seen = read_done(Path(out), retry_failed) if resume and out else Seen()
    cache = orchestrator.dispatcher.cache
    hits0, misses0 = cache.stats.hits, cache.stats.misses
    workers = max(1, workers)
    disp = orchestrator.dispatcher
    disp.max_concurrency = max(disp.max_concurrency, workers)

    sink = LineSink(out, stream, on_line)
    bar = progress_bar(len(files), progress, progress_file)
    try:
        asyncio.run(_run_all(files, orchestrator, specs, question, system, workers, seen, summary, sink, bar))
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        sink.close()
        summary.cache_hits = cache.stats.hits - hits0
        summary.cache_misses = cache.stats.misses - misses0
        summary.seconds = time.perf_counter() - t0
    return summary


async def _run_all(files, orch, specs, question, system, workers, seen, summary, sink, bar) -> None:
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for f in files:
        queue.put_nowait(f)

    async def worker() -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            line = await record_of(path, orch, specs, question, system, seen)
            if line is None:
                summary.skipped += 1
            else:
                summary.tally(line)
                sink.write(line)
            bar.update(1)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(workers, max(1, len(files))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, file: IO[str] | None, desc: str = "batch") -> Any:
    """A tqdm bar on stderr (or ``file``), or a stand-in that shows nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, file=file or sys.stderr, dynamic_ncols=True, mininterval=0.2)


_progress_bar = progress_bar  # the name earlier versions used

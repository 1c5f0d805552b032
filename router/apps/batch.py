"""Batch runs: every image under some folders through the experts (and the model), one JSON line each.

::

    vision-router batch photos/ scans/ --experts ocr,detect --out results.jsonl --workers 4
    vision-router batch catalogue/ -q "What product is this?" --out answers.jsonl --resume

Images are found by their content (magic bytes), not their names. Each image becomes one line, written
and flushed as soon as it is done, so an interrupted run leaves a valid JSONL file and ``--resume``
carries on where it stopped. A bad image is a failed line with its error, never the end of the run.
Expert results go through the router's on-disk cache: a second run over the same images is served
from it, and the summary says how much.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from experts.errors import ExpertError, ImageError, VisionRouterError
from experts.images import decode_image, image_id_of
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

ExpertSpec = tuple[str, dict[str, Any]]


def sniff_image(path: str | Path) -> bool:
    """Whether a file starts like an image this project decodes (PNG, JPEG, GIF, WebP, BMP, TIFF)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head[off : off + len(m)] == m for off, m in _MAGIC)


def iter_images(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Images under ``paths``, recursively and in a stable order. A file named on the command line is
    always yielded (a non-image then becomes a failed line); inside folders, files are chosen by their
    magic bytes, plus image-named files that turn out not to be images."""
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
            "total": self.total, "done": self.done, "failed": self.failed, "skipped": self.skipped,
            "cached": self.cached, "seconds": round(self.seconds, 3), "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses, "hit_rate": round(self.hit_rate, 4),
            "saved_s": round(self.saved_ms / 1000, 3), "interrupted": self.interrupted,
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


@dataclass
class _Seen:
    """Image ids (and, for unreadable files, paths) already in the output."""

    ids: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)


def read_done(out: Path, retry_failed: bool = False) -> _Seen:
    """What an earlier run already wrote; a torn last line (from a hard kill) is ignored."""
    seen = _Seen()
    if not out.exists():
        return seen
    with open(out, encoding="utf-8") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if not isinstance(line, dict) or (retry_failed and line.get("status") != "ok"):
                continue
            if line.get("image_id"):
                seen.ids.add(line["image_id"])
            elif line.get("path"):
                seen.paths.add(str(line["path"]))
    return seen


def _open_for_append(out: Path) -> IO[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A run killed mid-write may have left a line without its newline: start on a fresh line.
    if out.exists() and out.stat().st_size:
        with open(out, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            with open(out, "a", encoding="utf-8") as f:
                f.write("\n")
    return open(out, "a", encoding="utf-8")


# --- the run ------------------------------------------------------------------------------------
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

    Lines go to ``out`` (appended, flushed one by one) or to ``stream`` (default stdout). ``experts``
    defaults to the orchestrator's fallback experts that are installed when no question is given;
    with a question and no experts, the router decides as for ``ask``. Raises
    :class:`VisionRouterError` only for problems that would fail every image (unknown expert, Ollama
    unreachable, model missing).
    """
    t0 = time.perf_counter()
    registry = orchestrator.registry
    specs = [(e, {}) if isinstance(e, str) else (e[0], dict(e[1])) for e in experts or ()]
    for name, args in specs:
        registry.get(name).parse_args(args)  # unknown names and bad arguments: fail now, once
    if not specs and question is None:
        specs = [(n, {}) for n in orchestrator.settings.fallback if registry.resolve(n)]
        if not specs:
            raise ExpertError("no experts to run: name some with --experts (see `vision-router expert list`)")
    if resume and out is None:
        raise VisionRouterError("--resume needs --out FILE (the results of the earlier run)")

    files = list(iter_images(paths))
    summary = BatchSummary(total=len(files), out=str(out) if out else None)
    seen = read_done(Path(out), retry_failed) if resume and out else _Seen()
    cache = orchestrator.dispatcher.cache
    hits0, misses0 = cache.stats.hits, cache.stats.misses
    workers = max(1, workers)
    disp = orchestrator.dispatcher
    disp.max_concurrency = max(disp.max_concurrency, workers)

    sink: IO[str] = _open_for_append(Path(out)) if out else (stream or sys.stdout)
    bar = _progress_bar(len(files), progress, progress_file)
    try:
        asyncio.run(
            _run_all(files, orchestrator, specs, question, system, workers, seen, summary, sink, bar, on_line)
        )
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        if out:
            sink.close()
        else:
            sink.flush()
        summary.cache_hits = cache.stats.hits - hits0
        summary.cache_misses = cache.stats.misses - misses0
        summary.seconds = time.perf_counter() - t0
    return summary


async def _run_all(files, orch, specs, question, system, workers, seen, summary, sink, bar, on_line) -> None:
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for f in files:
        queue.put_nowait(f)

    def emit(line: dict[str, Any]) -> None:
        # One write per line, then flush: an interrupted run leaves whole lines only.
        sink.write(json.dumps(line, ensure_ascii=False) + "\n")
        sink.flush()
        if on_line is not None:
            on_line(line)

    async def worker() -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            line = await _one(path, orch, specs, question, system, seen, summary)
            if line is not None:
                emit(line)
            bar.update(1)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(workers, max(1, len(files))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def _one(path: Path, orch, specs, question, system, seen: _Seen, summary: BatchSummary):
    t0 = time.perf_counter()
    line: dict[str, Any] = {"path": str(path), "image_id": None}
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        if str(path) in seen.paths:
            summary.skipped += 1
            return None
        return _failed(line, summary, f"{path}: {exc.strerror or exc}", t0)
    line["image_id"] = image_id = image_id_of(data)
    if image_id in seen.ids:
        summary.skipped += 1
        return None
    try:
        img = await asyncio.to_thread(decode_image, data, source=str(path), **orch.settings.image_limits())
    except ImageError as exc:
        return _failed(line, summary, str(exc), t0)
    line.update(width=img.width, height=img.height, format=img.format)

    answer: str | None = None
    if question is not None:
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question, "images": [img]})
        try:
            final = await orch.achat(messages, experts=specs)
        except (ModelNotFound, OllamaUnreachable):
            raise  # every image would fail the same way: stop the run with that one line
        except VisionRouterError as exc:
            return _failed(line, summary, str(exc), t0)
        answer = final.answer
        results = [r for a in final.analyses for r in a.results]
    else:
        calls = [ExpertCall(img, 1, name, args, source="batch") for name, args in specs]
        results = await orch.dispatcher.run_all(calls)
    analysis = ImageAnalysis.merge(image_id, 1, results, img.width, img.height)

    ok_results = [r for r in results if not r.error]
    line["experts"] = {r.expert: _expert_note(r) for r in results}
    line["result"] = analysis.model_dump(mode="json", exclude={"results", "index", "image_id"})
    if answer is not None:
        line["answer"] = answer
    all_cached = bool(results) and all(r.cached for r in results)
    line["cached"] = all_cached
    summary.saved_ms += sum(r.timing_ms for r in results if r.cached)
    if results and not ok_results:
        errors = "; ".join(f"{r.expert}: {r.error}" for r in results)
        return _failed(line, summary, f"every expert failed: {errors}", t0)
    line["status"] = "ok"
    line["error"] = None
    line["seconds"] = round(time.perf_counter() - t0, 4)
    summary.done += 1
    summary.cached += all_cached
    return line


def _expert_note(r: ExpertResult) -> dict[str, Any]:
    note: dict[str, Any] = {"timing_ms": round(r.timing_ms, 1), "cached": r.cached}
    if r.args:
        note["args"] = r.args
    if r.error:
        note["error"] = r.error
    return note


def _failed(line: dict[str, Any], summary: BatchSummary, error: str, t0: float) -> dict[str, Any]:
    summary.failed += 1
    line["status"] = "error"
    line["error"] = error
    line["seconds"] = round(time.perf_counter() - t0, 4)
    return line


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool, file: IO[str] | None):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="batch", file=file or sys.stderr, dynamic_ncols=True,
                mininterval=0.2)

"""Building the image index: experts on each new image, embeddings in batches, incremental by path,
size, modification time and content."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts.errors import ImageError
from experts.images import DecodedImage, decode_image, image_id_of
from experts.schema import ExpertResult, ImageAnalysis
from router.apps.batch import FileRefused, iter_images, progress_bar, read_image_file
from router.apps.rag.embed import ImageEmbedder, TextEmbedder, make_embedder
from router.apps.rag.store import ImageIndex, ImageIndexError, document, document_text
from router.core.dispatch import ExpertCall

log = logging.getLogger(__name__)

INDEX_EXPERTS = ("ocr", "detect", "caption")
_BATCH = 16


@dataclass
class IndexReport:
    added: int = 0
    unchanged: int = 0
    relinked: int = 0  # known bytes at a new path: path recorded, nothing re-run
    updated: int = 0  # a path whose bytes changed
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    experts_run: int = 0
    seconds: float = 0.0
    total: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "relinked": self.relinked,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": len(self.failed),
            "errors": [{"path": p, "error": e} for p, e in self.failed],
            "experts_run": self.experts_run,
            "seconds": round(self.seconds, 3),
            "total": self.total,
        }

    def render(self) -> str:
        return (
            f"index: {self.added} added, {self.updated} updated, {self.relinked} relinked, "
            f"{self.unchanged} unchanged, {self.removed} removed, {len(self.failed)} failed "
            f"({self.total} images, {self.seconds:.1f} s)"
        )


def index_images(
    paths: Sequence[str | Path],
    db: str | Path,
    orchestrator: Any,
    *,
    embedder: TextEmbedder | None = None,
    experts: Sequence[str] | None = None,
    image_embedder: ImageEmbedder | None | bool = True,
    prune: bool = True,
    progress: bool = False,
    on_file: Callable[[str, str], None] | None = None,
    analyser: Analyser | None = None,
) -> IndexReport:
    """Index (or bring up to date) every image under ``paths``; see the package docs.

    ``experts`` default: those of ocr, detect, caption that are installed and usable. ``image_embedder``:
    ``True`` finds CLIP in the orchestrator's registry, ``None``/``False`` indexes without image vectors.
    ``analyser`` runs the experts of all new images at once elsewhere (``index --ray``: see
    :func:`router.apps.scale.ray_analyser`); by default they run here, image by image.
    """
    t0 = time.perf_counter()
    registry = orchestrator.registry
    names = list(experts) if experts else usable_experts(registry, INDEX_EXPERTS)
    for n in names:
        registry.expert_class(n)  # unknown names fail now, once
    files = [p.resolve() for p in iter_images(paths)]
    report = IndexReport(total=len(files))
    with ImageIndex(db) as idx:
        embedder = index_embedder(idx, db, embedder, orchestrator.settings.ollama_host)
        job = Indexer(idx, orchestrator, names, embedder, image_embedder, report, on_file, defer=analyser is not None)
        bar = progress_bar(len(files), progress, None)
        try:
            for path in files:
                job.add(path)
                bar.update(1)
            if analyser is not None:
                job.analyse_deferred(analyser)
            job.flush()
        finally:
            bar.close()
        if prune:
            job.prune([Path(p).resolve() for p in paths], {str(p) for p in files})
    report.seconds = time.perf_counter() - t0
    return report


def index_embedder(
    idx: ImageIndex, db: str | Path, embedder: TextEmbedder | None, ollama_host: str | None
) -> TextEmbedder:
    """The text embedder for an index: the one it was built with, unless another is given (which is
    refused when the index already holds vectors of a different model)."""
    meta = idx.meta()
    embedder = embedder or make_embedder(meta.get("text_model"), ollama_host)
    if meta.get("text_model") and meta["text_model"] != embedder.id:
        raise ImageIndexError(
            f"index {db} was built with text embeddings from {meta['text_model']}, not {embedder.id}: "
            f"use --embed-model {meta['text_model']}, or another --db"
        )
    return embedder


# (paths, expert names) -> (path, its batch line, its expert results) for each path, in any order.
Analyser = Callable[[Sequence[str], Sequence[str]], Iterable[tuple[str, dict[str, Any], list[ExpertResult]]]]


class Indexer:
    """One indexing pass over an open index: what is known, what changed here, what waits for embedding.
    With ``defer``, new images wait for :meth:`analyse_deferred` instead of running their experts here."""

    def __init__(
        self,
        idx: ImageIndex,
        orchestrator: Any,
        names: list[str],
        embedder: TextEmbedder,
        image_embedder: ImageEmbedder | None | bool,
        report: IndexReport,
        on_file: Callable[[str, str], None] | None = None,
        defer: bool = False,
    ) -> None:
        self.idx = idx
        self.orchestrator = orchestrator
        self.names = names
        self.embedder = embedder
        self.report = report
        self.on_file = on_file
        self.limits = orchestrator.settings.image_limits()
        self.known = idx.files()
        self.files_of: dict[str, list[dict[str, Any]]] = {}  # image_id -> its file entries, as changed here
        self.pending: list[tuple[dict[str, Any], DecodedImage | None, str]] = []
        # image_id -> {"image_id", "files", "paths", "format", "status"} of new images waiting for experts
        self.deferred: dict[str, dict[str, Any]] | None = {} if defer else None
        self._image_embedder = image_embedder
        self._img_emb: list[ImageEmbedder | None] = []

    # --- bookkeeping ----------------------------------------------------------------------------
    def note(self, path: str, what: str, count: bool = True) -> None:
        """Count ``path`` as ``what`` (added, updated, ...) and tell the caller."""
        if count:
            setattr(self.report, what, getattr(self.report, what) + 1)
        if self.on_file is not None:
            self.on_file(path, what)

    def fail(self, path: str, error: str) -> None:
        """Record a file that could not be indexed; the pass goes on."""
        self.report.failed.append((path, error))
        self.note(path, "failed", count=False)

    def entries(self, image_id: str) -> list[dict[str, Any]]:
        if image_id not in self.files_of:
            pl = self.idx.get(image_id)
            self.files_of[image_id] = list(pl.get("files", [])) if pl else []
        return self.files_of[image_id]

    def set_entries(self, image_id: str, ents: list[dict[str, Any]]) -> None:
        self.files_of[image_id] = ents
        self.idx.set_files(image_id, ents)

    def drop_path(self, image_id: str, path: str) -> None:
        self.set_entries(image_id, [f for f in self.entries(image_id) if f["path"] != path])

    def image_embedder(self) -> ImageEmbedder | None:
        # CLIP is looked up only when there is an image to embed: an up-to-date index loads no model.
        if not self._img_emb:
            found = self._image_embedder
            if found is True:
                found = ImageEmbedder.from_registry(self.orchestrator.registry)
            self._img_emb.append(found or None)
        return self._img_emb[0]

    # --- one file -------------------------------------------------------------------------------
    def add(self, path: Path) -> None:
        """Bring one file's entry up to date: nothing, a path recorded, or experts run and queued."""
        sp = str(path)
        try:
            st = path.stat()
        except OSError as exc:
            return self.fail(sp, exc.strerror or str(exc))
        old = self.known.get(sp)
        if old and old[1] == st.st_size and old[2] == st.st_mtime_ns:
            return self.note(sp, "unchanged")
        try:
            data = read_image_file(path, self.limits["max_bytes"])
        except FileRefused as exc:
            return self.fail(sp, exc.reason)
        image_id = image_id_of(data)
        entry = {"path": sp, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        changed = bool(old) and old[0] != image_id
        if changed:
            self.drop_path(old[0], sp)
        if self._relink(image_id, entry, changed, bool(old)):
            return None
        try:
            img = decode_image(data, source=sp, **self.limits)
        except ImageError as exc:
            return self.fail(sp, str(exc))
        status = "updated" if changed else "added"
        if self.deferred is not None:
            self.deferred[image_id] = {
                "image_id": image_id,
                "files": [entry],
                "paths": [sp],
                "format": img.format,
                "status": status,
            }
        else:
            results = self._run_experts(img)
            self.pending.append(
                (self._payload(image_id, img.format, img.width, img.height, results, [entry]), img, status)
            )
        self.note(sp, status)
        if len(self.pending) >= _BATCH:
            self.flush()
        return None

    def _relink(self, image_id: str, entry: dict[str, Any], changed: bool, known: bool) -> bool:
        """Bytes indexed already (touched, copied or moved): record the path, run nothing."""
        sp = entry["path"]
        queued = next((pl for pl, _, _ in self.pending if pl["image_id"] == image_id), None)
        if queued is None and self.deferred is not None:
            queued = self.deferred.get(image_id)
        if queued is not None:
            queued["files"].append(entry)
            queued["paths"].append(sp)
            self.note(sp, "updated" if changed else "relinked")
            return True
        ents = self.entries(image_id)
        if not ents:
            return False
        self.set_entries(image_id, [f for f in ents if f["path"] != sp] + [entry])
        self.note(sp, "updated" if changed else "unchanged" if known else "relinked")
        return True

    def _run_experts(self, img: DecodedImage) -> list[ExpertResult]:
        calls = [ExpertCall(img, 1, n, source="index") for n in self.names]
        return self.orchestrator.dispatcher.run_sync(calls) if calls else []

    def _payload(
        self, image_id: str, fmt: str, width: int, height: int, results: list[ExpertResult], files: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self.report.experts_run += sum(1 for r in results if not r.cached)
        analysis = ImageAnalysis.merge(image_id, 1, results, width, height)
        payload = {
            "image_id": image_id,
            "files": files,
            "paths": [f["path"] for f in files],
            "format": fmt,
            "experts": self.names,
            "indexed_at": time.time(),
            "text_model": self.embedder.id,
            **document(analysis),
        }
        payload["document"] = document_text(payload)
        return payload

    def analyse_deferred(self, analyser: Analyser) -> None:
        """Run the experts of the waiting images through ``analyser`` and queue them for embedding."""
        waiting, self.deferred = self.deferred or {}, None
        by_path = {item["paths"][0]: item for item in waiting.values()}
        for path, line, results in analyser(list(by_path), self.names):
            item = by_path.pop(path, None)
            if item is None:
                continue
            if line.get("status") == "error" or line.get("width") is None:
                self._fail_deferred(item, line.get("error") or "unreadable")
                continue
            payload = self._payload(
                item["image_id"], item["format"], line["width"], line["height"], results, item["files"]
            )
            self.pending.append((payload, None, item["status"]))  # the image is read again only for CLIP
            if len(self.pending) >= _BATCH:
                self.flush()
        for item in by_path.values():  # nothing came back for these
            self._fail_deferred(item, "the experts returned no result")

    def _fail_deferred(self, item: dict[str, Any], error: str) -> None:
        status = item["status"]
        setattr(self.report, status, getattr(self.report, status) - 1)  # counted when it was queued
        self.fail(item["paths"][0], error)

    # --- batches and pruning --------------------------------------------------------------------
    def flush(self) -> None:
        """Embed and store what is pending."""
        if self.pending:
            _flush(self.idx, self.pending, self.embedder, self.image_embedder())
            self.pending = []

    def prune(self, roots: list[Path], seen: set[str]) -> None:
        """Drop the entries of files under ``roots`` that are gone."""
        for sp, (image_id, _, _) in self.known.items():
            if sp in seen or Path(sp).exists():
                continue
            if any(Path(sp).is_relative_to(r) for r in roots):
                self.drop_path(image_id, sp)
                self.report.removed += 1
                self.note(sp, "removed", count=False)


def _flush(idx: ImageIndex, pending: list, embedder: TextEmbedder, img_emb: ImageEmbedder | None) -> None:
    if not pending:
        return
    text_vecs = embedder.embed([pl["document"] for pl, _, _ in pending])
    image_vecs = None
    if img_emb is not None:
        try:
            image_vecs = [img_emb.image(img if img is not None else _reload(pl)) for pl, img, _ in pending]
        except Exception as exc:  # a CLIP failure leaves the text side usable
            log.warning("image embeddings failed, indexing text only: %s", exc)
    sizes = idx.ensure(int(text_vecs.shape[1]), int(image_vecs[0].shape[0]) if image_vecs else None)
    items = []
    for i, (pl, _, _) in enumerate(pending):
        vec = {"text": text_vecs[i].tolist()}
        if image_vecs is not None and "image" in sizes and sizes["image"] == image_vecs[i].shape[0]:
            vec["image"] = image_vecs[i].tolist()
            pl["image_model"] = img_emb.id
        items.append((pl, vec))
    idx.upsert(items)


def _reload(payload: dict[str, Any]) -> DecodedImage:
    path = payload["paths"][0]
    return decode_image(read_image_file(path, 1 << 62), source=path)


def usable_experts(registry: Any, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are installed and whose engine reports itself usable."""
    out = []
    for n in names:
        if registry.resolve(n) is None:
            continue
        try:
            if registry.get(n).status().get("ok", True):
                out.append(registry.resolve(n))
        except Exception:  # a broken status means a broken engine: leave it out of the index
            continue
    return out

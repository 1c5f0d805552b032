"""Expert results cached by (image_id, expert, args): an in-memory LRU plus an optional on-disk store.

The disk store is one SQLite file, so a second run over the same images (or the same question
asked again) is served without running the expert. Errors are never cached.

The cache is an optimisation and never fails a request. A file that is not a cache (corrupt, or a
table with other columns) is moved aside as ``results.sqlite.bad-<timestamp>`` and a fresh one
started; a folder or file that cannot be used (read-only, locked by another process) leaves the
cache in memory only. Each such event is one warning line; a row that cannot be read is a miss and
is deleted.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from experts.schema import ExpertResult

log = logging.getLogger(__name__)

# Seconds a statement waits for another process's lock. Short: gets and puts run on the proxy's
# event loop, and a cache that cannot answer quickly is worth less than recomputing.
BUSY_TIMEOUT_S = 0.5
# Failed disk statements in a row before the disk is left alone for the life of the process.
MAX_DISK_FAILURES = 3
# SQLite's words for "this file is not (or no longer) a usable database".
_CORRUPT = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
_CORRUPT_TEXT = ("not a database", "malformed")


def cache_key(image_id: str, expert: str, args: dict[str, Any]) -> str:
    """Stable key: the same arguments in any order give the same key."""
    return f"{image_id}:{expert}:{json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)}"


@dataclass
class CacheStats:
    """Counters for metrics, traces and `doctor`; ``disk`` says whether the on-disk store is in use."""

    hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    stores: int = 0
    disk: bool = False
    disk_errors: int = 0
    bad_rows: int = 0
    disk_note: str | None = None  # why the disk is off, or what was moved aside

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "disk_hits": self.disk_hits,
            "misses": self.misses,
            "stores": self.stores,
            "hit_rate": round(self.hit_rate, 4),
            "disk": self.disk,
            "disk_errors": self.disk_errors,
            "bad_rows": self.bad_rows,
            "disk_note": self.disk_note,
        }


class _WrongSchema(sqlite3.DatabaseError):
    """The file is a database, but its ``results`` table is not ours."""


class ResultCache:
    """Thread-safe LRU of expert results, optionally backed by ``<dir>/results.sqlite``."""

    def __init__(self, max_items: int = 1024, disk_dir: str | Path | None = None) -> None:
        self.max_items = max(0, max_items)
        self._mem: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self._db: sqlite3.Connection | None = None
        self._failures = 0  # disk statements failed in a row
        self._warned: set[str] = set()
        self._replaced = False  # a corrupt file is moved aside once per process, not in a loop
        self.disk_path: Path | None = None
        if disk_dir:
            self.disk_path = Path(disk_dir).expanduser() / "results.sqlite"
            self._db = self._open(self.disk_path)
            self.stats.disk = self._db is not None

    # --- public API -------------------------------------------------------------------------------
    def get(self, key: str) -> ExpertResult | None:
        """The cached result for ``key`` (marked ``cached``), or None. Never raises for cache trouble."""
        with self._lock:
            raw = self._mem.get(key)
            if raw is not None:
                self._mem.move_to_end(key)
                self.stats.hits += 1
            else:
                disk = self._disk_get(key)
                if disk is None:
                    self.stats.misses += 1
                    return None
                self._remember(key, disk[0])
                self.stats.hits += 1
                self.stats.disk_hits += 1
                disk[1].cached = True
                return disk[1]
        result = ExpertResult.model_validate_json(raw)  # written by this process: always valid
        result.cached = True
        return result

    def put(self, key: str, result: ExpertResult) -> None:
        """Remember a result (errors are not cached); a failed disk write is logged, never raised."""
        if result.error:
            return
        raw = result.model_copy(update={"cached": False}).model_dump_json()
        with self._lock:
            self._remember(key, raw)
            self.stats.stores += 1
            self._disk_run("write", "INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", (key, raw))

    def __len__(self) -> int:
        return len(self._mem)

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            self._disk_run("clear", "DELETE FROM results", ())

    def close(self) -> None:
        with self._lock:
            self._close_db()

    # --- memory -----------------------------------------------------------------------------------
    def _remember(self, key: str, raw: str) -> None:
        if self.max_items == 0:
            return
        self._mem[key] = raw
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)

    # --- disk (every call below holds self._lock) -------------------------------------------------
    def _disk_get(self, key: str) -> tuple[str, ExpertResult] | None:
        row = self._disk_run("read", "SELECT value FROM results WHERE key = ?", (key,), fetch=True)
        if row is None:
            return None
        raw = row[0]
        try:
            return raw, ExpertResult.model_validate_json(raw)
        except (ValidationError, ValueError, TypeError) as exc:
            # Not JSON, or not a result of this schema: a miss. Deleted so it is recomputed and rewritten.
            self.stats.bad_rows += 1
            self._warn_once(
                "row",
                "result cache %s: dropped an unreadable entry (%s); it is recomputed "
                "(further ones are counted in bad_rows, not logged)",
                self.disk_path,
                _short(exc),
            )
            self._disk_run("delete", "DELETE FROM results WHERE key = ?", (key,))
            return None

    def _disk_run(self, op: str, sql: str, params: tuple[Any, ...], fetch: bool = False) -> Any:
        """One statement on the disk store; any SQLite error is handled here and gives None."""
        if self._db is None:
            return None
        try:
            cur = self._db.execute(sql, params)
            out = cur.fetchone() if fetch else None
        except sqlite3.Error as exc:
            self._disk_failed(op, exc)
            return None
        self._failures = 0
        return out

    def _disk_failed(self, op: str, exc: sqlite3.Error) -> None:
        self.stats.disk_errors += 1
        if _is_corrupt(exc) and not self._replaced:
            # The file went bad under us: same as finding it bad at start.
            self._close_db()
            self._db = self._replace(self.disk_path, exc) if self.disk_path else None
            self.stats.disk = self._db is not None
            return
        self._failures += 1
        if self._failures >= MAX_DISK_FAILURES or _is_corrupt(exc):
            self._close_db()
            self.stats.disk = False
            self.stats.disk_note = f"{op} failed: {exc}"
        # One line per process, whatever follows: the counters in stats tell the rest.
        self._warn_once(
            "disk",
            "result cache %s: %s failed (%s); serving from memory only while it fails "
            "(the disk is left alone after %d failures in a row)",
            self.disk_path,
            op,
            exc,
            MAX_DISK_FAILURES,
        )

    def _open(self, path: Path) -> sqlite3.Connection | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return self._memory_only(path.parent, f"cannot create the folder: {exc.strerror or exc}")
        try:
            return _connect(path)
        except sqlite3.Error as exc:
            if isinstance(exc, _WrongSchema) or _is_corrupt(exc):
                return self._replace(path, exc, recheck=True)
            return self._memory_only(path, str(exc))

    def _replace(self, path: Path, exc: sqlite3.Error, recheck: bool = False) -> sqlite3.Connection | None:
        """Move an unusable file aside (kept for a post-mortem) and start a fresh one."""
        self._replaced = True
        if recheck:  # another process may have replaced it a moment ago: then that fresh file is the one to use
            try:
                return _connect(path)
            except (OSError, sqlite3.Error):
                pass
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        try:
            path.replace(aside)
            # The WAL belongs to the old file: left next to the fresh one, SQLite would replay it there.
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.replace(aside.with_name(aside.name + suffix))
            db = _connect(path)
        except (OSError, sqlite3.Error) as exc2:
            return self._memory_only(path, f"{exc}; could not start a fresh one: {exc2}")
        self.stats.disk_note = f"moved aside: {aside}"
        log.warning("result cache %s is not usable (%s): moved aside to %s; started a fresh one", path, exc, aside.name)
        return db

    def _memory_only(self, where: Path, reason: str) -> None:
        self.stats.disk_note = f"{where}: {reason}"
        log.warning("result cache %s: %s; running in memory only", where, reason)
        return None

    def _warn_once(self, kind: str, msg: str, *args: Any) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(msg, *args)

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass  # closing a broken connection: nothing left to save
            self._db = None


def _connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the store and check that it is ours; closes the connection on any error."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # A cache, not a ledger: no fsync per write (WAL keeps the file consistent; a crash can
        # lose only the last few results). Stores run on the proxy's event loop: 0.36 -> 0.06 ms.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        columns = [row[1] for row in db.execute("PRAGMA table_info(results)")]
        if columns != ["key", "value"]:
            raise _WrongSchema(f"its `results` table has columns {', '.join(columns) or 'none'}, not key, value")
    except BaseException:
        db.close()
        raise
    return db


def _is_corrupt(exc: sqlite3.Error) -> bool:
    if isinstance(exc, _WrongSchema):
        return True
    name = getattr(exc, "sqlite_errorname", "")
    return name in _CORRUPT or any(t in str(exc) for t in _CORRUPT_TEXT)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        return f"{where}: {first.get('msg')}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

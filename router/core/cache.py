"""Expert results cached by (image_id, expert, args): an in-memory LRU plus an optional on-disk store.

The disk store is one SQLite file, so a second run over the same images (or the same question
asked again) is served without running the expert. Errors are never cached.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experts.schema import ExpertResult


def cache_key(image_id: str, expert: str, args: dict[str, Any]) -> str:
    """Stable key: the same arguments in any order give the same key."""
    return f"{image_id}:{expert}:{json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)}"


@dataclass
class CacheStats:
    hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    stores: int = 0

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
        }


class ResultCache:
    """Thread-safe LRU of expert results, optionally backed by ``<dir>/results.sqlite``."""

    def __init__(self, max_items: int = 1024, disk_dir: str | Path | None = None) -> None:
        self.max_items = max(0, max_items)
        self._mem: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()
        self._db: sqlite3.Connection | None = None
        self.disk_path: Path | None = None
        if disk_dir:
            d = Path(disk_dir).expanduser()
            d.mkdir(parents=True, exist_ok=True)
            self.disk_path = d / "results.sqlite"
            self._db = sqlite3.connect(self.disk_path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # A cache, not a ledger: no fsync per write (WAL keeps the file consistent; a crash can
            # lose only the last few results). Stores run on the proxy's event loop: 0.36 -> 0.06 ms.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> ExpertResult | None:
        with self._lock:
            raw = self._mem.get(key)
            if raw is not None:
                self._mem.move_to_end(key)
                self.stats.hits += 1
            elif self._db is not None:
                row = self._db.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    raw = row[0]
                    self._remember(key, raw)
                    self.stats.hits += 1
                    self.stats.disk_hits += 1
            if raw is None:
                self.stats.misses += 1
                return None
        result = ExpertResult.model_validate_json(raw)
        result.cached = True
        return result

    def put(self, key: str, result: ExpertResult) -> None:
        if result.error:
            return
        raw = result.model_copy(update={"cached": False}).model_dump_json()
        with self._lock:
            self._remember(key, raw)
            self.stats.stores += 1
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", (key, raw))

    def _remember(self, key: str, raw: str) -> None:
        if self.max_items == 0:
            return
        self._mem[key] = raw
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)

    def __len__(self) -> int:
        return len(self._mem)

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            if self._db is not None:
                self._db.execute("DELETE FROM results")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

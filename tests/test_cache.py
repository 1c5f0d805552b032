"""The result cache is an optimisation: a broken cache file or folder never takes `ask`, `serve` or
`batch` down. Each probe gives one warning line and the request is still answered."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import router.commands.common as common
from experts.schema import ExpertResult
from router.commands import cli
from router.core.cache import ResultCache
from tests.conftest import png_bytes
from tests.router_experts import FakeOcr, make_registry

QUESTION = "What is written here?"  # `written` picks ocr by keyword


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry()
    monkeypatch.setattr(common, "default_registry", lambda: reg)
    return reg


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "poster.png"
    p.write_bytes(png_bytes(120, 80))
    return p


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """The cache folder `ask`, `serve` and `batch` use (the default one, through the environment)."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("VISION_ROUTER_CACHE", str(d))
    return d


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "router.core.cache" and r.levelno >= logging.WARNING]


def one_warning(caplog, *fragments: str) -> str:
    lines = cache_warnings(caplog)
    assert len(lines) == 1, lines
    assert "\n" not in lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def ask(image: Path, fake_ollama, answer: str = "It says GRAND OPENING."):
    fake_ollama.script(answer)
    return CliRunner().invoke(
        cli, ["ask", str(image), "-q", QUESTION, "--ollama-host", fake_ollama.url], catch_exceptions=False
    )


def answered(r, answer: str = "It says GRAND OPENING.") -> None:
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == answer
    assert "Traceback" not in r.output


def set_aside(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("results.sqlite.bad-*") if not p.name.endswith(("-wal", "-shm")))


def ocr_result(image_id: str = "img") -> ExpertResult:
    return ExpertResult(image_id=image_id, expert="ocr", full_text="GRAND OPENING")


# --- a corrupt file -------------------------------------------------------------------------------
def test_corrupt_cache_file_is_moved_aside_and_ask_is_answered(cache_dir, registry, image, fake_ollama, caplog):
    junk = random.Random(11).randbytes(8192)
    (cache_dir / "results.sqlite").write_bytes(junk)
    FakeOcr.calls = 0
    answered(ask(image, fake_ollama))
    one_warning(caplog, "results.sqlite", "moved aside", "fresh")
    (bad,) = set_aside(cache_dir)
    assert bad.read_bytes() == junk  # kept for a post-mortem, never deleted
    # The fresh file works: the same question again is served from it.
    caplog.clear()
    answered(ask(image, fake_ollama))
    assert FakeOcr.calls == 1 and cache_warnings(caplog) == []
    with sqlite3.connect(cache_dir / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


# --- a wrong schema -------------------------------------------------------------------------------
def _proxy_chat(stack, question: str = QUESTION) -> httpx.Response:
    from tests.test_proxy_support import IMAGE_B64, MODEL

    stack.fake.script("It says SALE.")
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": question, "images": [IMAGE_B64]}]}
    return httpx.post(stack.url + "/api/chat", json=body, timeout=30)


def test_wrong_schema_is_moved_aside_and_the_proxy_starts_and_answers(tmp_path, caplog):
    from tests.test_proxy_support import settings, start_stack, stop_stack

    d = tmp_path / "cache"
    d.mkdir()
    with sqlite3.connect(d / "results.sqlite") as db:  # somebody else's table called `results`
        db.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, payload BLOB)")
        db.execute("INSERT INTO results (payload) VALUES (x'00ff')")
    db.close()
    stack = start_stack(settings(cache_dir=str(d)))
    try:
        r = _proxy_chat(stack)
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] == "It says SALE."
        one_warning(caplog, "moved aside", "columns")
        (bad,) = set_aside(d)
        with sqlite3.connect(bad) as old:  # the other table is intact in the file set aside
            assert old.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
        old.close()
        metrics = httpx.get(stack.url + "/_vision/metrics", timeout=10).json()
        assert metrics["cache"]["disk"] is True and metrics["cache"]["stores"] >= 1
    finally:
        stop_stack(stack)


# --- a read-only / unusable folder ----------------------------------------------------------------
def test_cache_folder_that_cannot_be_created_runs_memory_only_for_ask(
    tmp_path, monkeypatch, registry, image, fake_ollama, caplog
):
    # Tests run as root, where chmod blocks nothing: a path under a regular FILE cannot be created by anyone.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("VISION_ROUTER_CACHE", str(blocker / "cache"))
    answered(ask(image, fake_ollama))
    one_warning(caplog, "memory only", str(blocker / "cache"))


def test_unopenable_cache_file_runs_memory_only_and_the_proxy_answers(tmp_path, monkeypatch, caplog):
    from tests.test_proxy_support import settings, start_stack, stop_stack

    real_connect = sqlite3.connect

    def refuse(path, *args, **kwargs):
        if str(path).endswith("results.sqlite"):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", refuse)
    stack = start_stack(settings(cache_dir=str(tmp_path / "cache")))
    try:
        r = _proxy_chat(stack)
        assert r.status_code == 200, r.text
        one_warning(caplog, "memory only", "unable to open database file")
        cache = httpx.get(stack.url + "/_vision/metrics", timeout=10).json()["cache"]
        assert cache["disk"] is False and cache["stores"] >= 1
    finally:
        stop_stack(stack)


# --- a locked database ----------------------------------------------------------------------------
def test_locked_cache_runs_memory_only_within_a_second_and_ask_is_answered(
    cache_dir, registry, image, fake_ollama, caplog
):
    holder = sqlite3.connect(cache_dir / "results.sqlite", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    try:
        t0 = time.perf_counter()
        answered(ask(image, fake_ollama))
        assert time.perf_counter() - t0 < 3.0  # not sqlite's default 5 s wait, then a crash
        one_warning(caplog, "memory only", "locked")
    finally:
        holder.rollback()
        holder.close()
    assert set_aside(cache_dir) == []  # a locked file is somebody else's: never moved


# --- a bad row ------------------------------------------------------------------------------------
def test_bad_rows_are_misses_deleted_and_logged_once_in_batch(tmp_path, cache_dir, monkeypatch, caplog):
    reg = make_registry()
    monkeypatch.setattr(common, "configured_registry", lambda settings: reg)
    coll = tmp_path / "images"
    coll.mkdir()
    for i in range(3):
        (coll / f"{i}.png").write_bytes(png_bytes(40 + i, 30, (10 * i, 80, 120)))
    runner = CliRunner()
    FakeOcr.calls = 0
    r = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr", "--no-progress"])
    assert r.exit_code == 0 and FakeOcr.calls == 3, r.output
    with sqlite3.connect(cache_dir / "results.sqlite") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM results ORDER BY key")]
        db.execute("UPDATE results SET value = '{not json' WHERE key = ?", (keys[0],))
        db.execute("UPDATE results SET value = ? WHERE key = ?", (json.dumps({"image_id": 5}), keys[1]))
    db.close()
    caplog.clear()
    r = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr", "--no-progress"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert [ln["status"] for ln in lines] == ["ok"] * 3
    assert FakeOcr.calls == 5  # the two bad rows were run again, the good one was a hit
    one_warning(caplog, "unreadable", "results.sqlite")
    # ... and replaced by good rows: a third run is all hits.
    r = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr", "--no-progress"])
    assert r.exit_code == 0 and FakeOcr.calls == 5


def test_a_bad_row_is_a_miss_and_is_deleted(tmp_path, caplog):
    c = ResultCache(disk_dir=tmp_path)
    c.put("k", ocr_result())
    c.close()
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        db.execute("UPDATE results SET value = '[]'")
    db.close()
    c = ResultCache(disk_dir=tmp_path)
    assert c.get("k") is None and c.get("k") is None
    assert c.stats.misses == 2 and c.stats.as_dict()["bad_rows"] == 1
    one_warning(caplog, "unreadable")
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    db.close()
    c.close()


# --- failing writes and reads at run time ---------------------------------------------------------
class _FailingDb:
    """Stands in for the sqlite connection: every statement fails like a full or vanished disk."""

    def __init__(self, error: sqlite3.Error) -> None:
        self.error = error
        self.statements = 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        raise self.error

    def close(self) -> None:
        pass


def test_failing_writes_are_logged_once_and_results_still_served(tmp_path, caplog):
    c = ResultCache(disk_dir=tmp_path)
    c._db = fake = _FailingDb(sqlite3.OperationalError("disk I/O error"))
    for i in range(5):
        c.put(f"k{i}", ocr_result(f"img{i}"))
    assert [c.get(f"k{i}").full_text for i in range(5)] == ["GRAND OPENING"] * 5  # memory still serves
    one_warning(caplog, "disk I/O error", "memory only")
    # A few failures in a row and the disk is left alone: no statement per request on a dead disk.
    assert fake.statements == 3 and c.stats.as_dict()["disk"] is False
    c.close()


def test_corruption_found_at_run_time_moves_the_file_aside_and_starts_fresh(tmp_path, caplog):
    c = ResultCache(disk_dir=tmp_path)
    c.put("k", ocr_result())
    c._db.close()
    c._db = _FailingDb(sqlite3.DatabaseError("database disk image is malformed"))
    assert c.get("other") is None
    one_warning(caplog, "malformed", "moved aside")
    assert len(set_aside(tmp_path)) == 1
    c.put("k2", ocr_result())  # the fresh file takes writes again
    assert c.stats.as_dict()["disk"] is True
    c.close()
    assert ResultCache(disk_dir=tmp_path).get("k2").full_text == "GRAND OPENING"


def test_stats_say_whether_the_disk_is_in_use(tmp_path):
    assert ResultCache().stats.as_dict()["disk"] is False
    c = ResultCache(disk_dir=tmp_path)
    assert c.stats.as_dict()["disk"] is True
    c.close()

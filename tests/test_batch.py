"""Batch runs: images found by content, one JSON line each, bad images as error lines, resume,
Ctrl-C leaving a valid file, and the on-disk cache serving a second run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from experts.base import Expert, ExpertArgs
from experts.registry import Registry
from router.apps.batch import iter_images, parse_experts, read_done, run_batch, sniff_image
from router.commands import cli
from router.commands import common as cli_module
from router.core.config import Settings
from router.core.orchestrator import Orchestrator

ROOT = Path(__file__).resolve().parents[1]


# --- small deterministic experts ----------------------------------------------------------------
class _Args(ExpertArgs):
    query: str | None = None


class CountingOcr(Expert):
    """'Reads' the mean colour as text; sleeps a little so cache hits save measurable time."""

    name = "ocr"
    description = "test ocr"
    Args = _Args
    positional = "query"
    cost_s = 0.01
    calls = 0
    lock = threading.Lock()

    def _analyze(self, image, args):
        with CountingOcr.lock:
            CountingOcr.calls += 1
        time.sleep(self.cost_s)
        r, g, b = (int(v) for v in image.rgb().reshape(-1, 3).mean(axis=0))
        return self.new_result(image, full_text=f"COLOUR {r} {g} {b}")


class _DetectArgs(ExpertArgs):
    query: str | None = None
    mode: str | None = None


class CountingDetect(Expert):
    name = "detect"
    description = "test detect"
    Args = _DetectArgs
    positional = "query"
    calls = 0
    lock = threading.Lock()

    def _analyze(self, image, args):
        with CountingDetect.lock:
            CountingDetect.calls += 1
        time.sleep(0.01)
        return self.new_result(image, objects=["square"], measurements={"w": image.width, "h": image.height})


class AlwaysFails(Expert):
    name = "flaky"
    description = "always raises"
    Args = _Args

    def _analyze(self, image, args):
        raise RuntimeError("engine exploded")


def make_registry() -> Registry:
    reg = Registry()
    for cls in (CountingOcr, CountingDetect, AlwaysFails):
        reg.register(cls)
    CountingOcr.calls = CountingDetect.calls = 0
    return reg


# --- a generated collection -----------------------------------------------------------------------
def _png(i: int, size=(40, 30)) -> bytes:
    img = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    ImageDraw.Draw(img).rectangle([5, 5, 20, 20], fill=(255 - i % 256, 0, i % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG" if i % 3 == 0 else "PNG")
    return buf.getvalue()


def make_collection(root: Path, good: int = 47) -> dict[str, list[Path]]:
    """``good`` distinct images in nested folders (some with misleading or no extensions), 3 bad ones
    that look like images, and files that are not images and must be ignored."""
    paths: dict[str, list[Path]] = {"good": [], "bad": []}
    for i in range(good):
        sub = root / f"set{i % 4}" / ("deep" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        name = [f"img{i:02d}.png", f"img{i:02d}.jpg", f"img{i:02d}", f"img{i:02d}.dat"][i % 4]
        p = sub / name
        p.write_bytes(_png(i))
        paths["good"].append(p)
    bad = root / "bad"
    bad.mkdir()
    truncated = _png(999, (200, 200))
    (bad / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (bad / "not-really.jpg").write_bytes(b"this is a text file with an image name\n")
    (bad / "empty.png").write_bytes(b"")
    paths["bad"] = [bad / "truncated.png", bad / "not-really.jpg", bad / "empty.png"]
    (root / "notes.txt").write_text("not an image, not named like one\n")
    (root / "set0" / "data.json").write_text("{}")
    return paths


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]


@pytest.fixture
def use_registry(monkeypatch):
    reg = make_registry()
    monkeypatch.setattr(cli_module, "configured_registry", lambda settings: reg)
    return reg


# --- finding images -----------------------------------------------------------------------------
def test_images_are_found_by_content_not_name(tmp_path):
    paths = make_collection(tmp_path, good=8)
    found = list(iter_images([tmp_path]))
    assert sorted(found) == sorted(paths["good"] + paths["bad"])
    assert sniff_image(paths["good"][3])  # img03.dat is a PNG
    assert not sniff_image(tmp_path / "notes.txt")
    # A file named on the command line is always taken (it then fails clearly if not an image).
    assert list(iter_images([tmp_path / "notes.txt"])) == [tmp_path / "notes.txt"]


def test_parse_experts():
    assert parse_experts("ocr, detect:mode=measure") == [("ocr", {}), ("detect", {"mode": "measure"})]
    assert parse_experts(None) == []


# --- the acceptance run -------------------------------------------------------------------------
def test_batch_50_images_3_bad_progress_summary_resume_and_cache(tmp_path, use_registry):
    coll = tmp_path / "photos"
    make_collection(coll)
    out = tmp_path / "results.jsonl"
    runner = CliRunner()

    r1 = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr,detect", "--out", str(out), "--workers", "4"])
    assert r1.exit_code == 0, r1.output
    lines = lines_of(out)
    ok = [x for x in lines if x["status"] == "ok"]
    errors = [x for x in lines if x["status"] == "error"]
    assert (len(ok), len(errors)) == (47, 3)
    assert {Path(x["path"]).name for x in errors} == {"truncated.png", "not-really.jpg", "empty.png"}
    assert all(x["error"] for x in errors)
    assert any("empty image" in x["error"] for x in errors)
    first = ok[0]
    assert first["result"]["full_text"].startswith("COLOUR")
    assert first["result"]["objects"] == ["square"]
    assert set(first["experts"]) == {"ocr", "detect"} and first["cached"] is False
    assert len({x["image_id"] for x in ok}) == 47
    # progress bar and summary on stderr
    assert "50/50" in r1.stderr
    assert "47 done, 3 failed" in r1.stderr
    assert CountingOcr.calls == 47

    # Second run over the same folder, a fresh process-like orchestrator: served from the disk cache.
    out2 = tmp_path / "again.jsonl"
    CountingOcr.calls = 0
    r2 = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr,detect", "--out", str(out2)])
    assert r2.exit_code == 0, r2.output
    assert CountingOcr.calls == 0
    assert "47 served from cache" in r2.stderr
    assert "94 hits / 0 misses = 100% hit rate" in r2.stderr
    assert all(x["cached"] for x in lines_of(out2) if x["status"] == "ok")

    # Resume: keep the first 20 lines (plus a torn one, as a hard kill leaves), run again.
    raw = out.read_text("utf-8").splitlines(keepends=True)
    out.write_text("".join(raw[:20]) + raw[20][: len(raw[20]) // 2], "utf-8")
    r3 = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr,detect", "--out", str(out), "--resume"])
    assert r3.exit_code == 0, r3.output
    assert "20 skipped" in r3.stderr
    resumed = [json.loads(x) for x in out.read_text("utf-8").splitlines()]  # the torn line is gone: valid JSONL
    assert len(resumed) == 50
    assert len({x["path"] for x in resumed}) == 50

    # Resume again: nothing left to do.
    r4 = runner.invoke(cli, ["batch", str(coll), "--experts", "ocr,detect", "--out", str(out), "--resume"])
    assert "0 done, 0 failed, 50 skipped" in r4.stderr


def test_failed_expert_is_an_error_field_and_every_expert_failing_is_an_error_line(tmp_path):
    reg = make_registry()
    (tmp_path / "a.png").write_bytes(_png(1))
    orch = Orchestrator(Settings(cache_dir=str(tmp_path / "c")), registry=reg)
    buf = io.StringIO()
    s = run_batch([tmp_path], orch, stream=buf, experts=["ocr", "flaky"], progress=False)
    line = json.loads(buf.getvalue())
    assert line["status"] == "ok" and "engine exploded" in line["experts"]["flaky"]["error"]
    assert (s.done, s.failed) == (1, 0)

    buf = io.StringIO()
    s = run_batch([tmp_path], orch, stream=buf, experts=["flaky"], progress=False)
    line = json.loads(buf.getvalue())
    assert line["status"] == "error" and "every expert failed" in line["error"]
    assert s.failed == 1


def test_retry_failed_runs_error_lines_again(tmp_path):
    reg = make_registry()
    (tmp_path / "a.png").write_bytes(_png(1))
    out = tmp_path / "o.jsonl"
    orch = Orchestrator(Settings(cache_dir=""), registry=reg)
    run_batch([tmp_path / "a.png"], orch, out=out, experts=["flaky"], progress=False)
    assert read_done(out).ids and not read_done(out, retry_failed=True).ids
    s = run_batch([tmp_path / "a.png"], orch, out=out, experts=["ocr"], resume=True, retry_failed=True, progress=False)
    assert s.done == 1 and lines_of(out)[-1]["status"] == "ok"


def test_unknown_expert_and_resume_without_out_are_one_line_errors(tmp_path, use_registry):
    (tmp_path / "a.png").write_bytes(_png(1))
    r = CliRunner().invoke(cli, ["batch", str(tmp_path), "--experts", "nope"])
    assert r.exit_code == 1 and "Error: unknown expert 'nope'" in r.output
    r = CliRunner().invoke(cli, ["batch", str(tmp_path), "--resume"])
    assert r.exit_code == 1 and "--resume needs --out" in r.output


def test_batch_with_a_question_puts_the_answer_in_each_line(tmp_path, use_registry, fake_ollama):
    for i in range(3):
        (tmp_path / f"p{i}.png").write_bytes(_png(i))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    fake_ollama.responder = lambda path, body: "It is a coloured square."
    out = tmp_path / "answers.jsonl"
    r = CliRunner().invoke(
        cli,
        [
            "batch",
            str(tmp_path),
            "-q",
            "What colour is it?",
            "--experts",
            "ocr",
            "--ollama-host",
            fake_ollama.url,
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = lines_of(out)
    ok = [x for x in lines if x["status"] == "ok"]
    assert len(ok) == 3 and all(x["answer"] == "It is a coloured square." for x in ok)
    assert all("COLOUR" in x["result"]["full_text"] for x in ok)
    assert [x["status"] for x in lines].count("error") == 1
    # The model saw the experts' results, never the image bytes.
    chats = fake_ollama.calls("/api/chat")
    assert len(chats) == 3
    assert all("[IMAGE CONTEXT]" in json.dumps(c["messages"]) and "images" not in c["messages"][-1] for c in chats)


def test_missing_model_stops_the_run_with_one_line(tmp_path, use_registry, fake_ollama):
    (tmp_path / "a.png").write_bytes(_png(1))
    r = CliRunner().invoke(
        cli,
        ["batch", str(tmp_path), "-q", "hi", "-m", "no-such-model", "--ollama-host", fake_ollama.url, "--no-progress"],
    )
    assert r.exit_code == 1
    assert "Error: model 'no-such-model' not found" in r.output


def test_stdout_when_no_out(tmp_path, use_registry):
    (tmp_path / "a.png").write_bytes(_png(1))
    r = CliRunner().invoke(cli, ["batch", str(tmp_path), "--experts", "ocr", "--no-progress"])
    assert r.exit_code == 0
    assert json.loads(r.stdout.strip())["status"] == "ok"


_INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading, time
    # Ctrl-C raises KeyboardInterrupt even where the parent ignores SIGINT (a shell's background job does, and
    # its children inherit that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from experts.base import Expert, ExpertArgs
    from experts.registry import Registry
    from router.apps.batch import run_batch
    from router.core.config import Settings
    from router.core.orchestrator import Orchestrator

    calls = 0
    lock = threading.Lock()

    class Slow(Expert):
        # The first images are quick; from the 7th on it never returns (until Ctrl-C), so the run
        # cannot finish before the signal however loaded the machine is.
        name = "slow"
        Args = ExpertArgs
        def _analyze(self, image, args):
            global calls
            with lock:
                calls += 1
                n = calls
            if n > 6:
                threading.Event().wait()
            time.sleep(0.05)
            return self.new_result(image, caption="x" * 2000)

    reg = Registry()
    reg.register(Slow)
    orch = Orchestrator(Settings(cache_dir=""), registry=reg)
    print("started", flush=True)
    run_batch([sys.argv[1]], orch, out=sys.argv[2], experts=["slow"], workers=2, progress=False)
    """
)


def test_ctrl_c_leaves_a_valid_jsonl_and_resume_finishes(tmp_path):
    coll = tmp_path / "c"
    coll.mkdir()
    for i in range(40):
        (coll / f"{i:02d}.png").write_bytes(_png(i))
    out = tmp_path / "out.jsonl"
    script = tmp_path / "run.py"
    script.write_text(_INTERRUPT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(coll), str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0, "interrupted before it finished"
    assert "KeyboardInterrupt" in err
    text = out.read_text("utf-8")
    assert text.endswith("\n")
    done = [json.loads(x) for x in text.splitlines()]  # every line is whole JSON
    assert 4 <= len(done) <= 6

    reg = Registry()
    reg.register(CountingOcr)
    CountingOcr.calls = 0
    orch = Orchestrator(Settings(cache_dir=""), registry=reg)
    s = run_batch([coll], orch, out=out, experts=["ocr"], resume=True, progress=False)
    assert s.skipped == len(done) and s.done == 40 - len(done)
    assert len({x["image_id"] for x in lines_of(out)}) == 40


# --- issue 11: files are checked before they are read; an empty answer is not a success ------------
def test_an_oversized_file_is_refused_from_its_size_without_being_read(tmp_path):
    import tracemalloc

    big = tmp_path / "huge.png"
    with open(big, "wb") as f:  # sparse: 256 MiB on paper, nothing on disk
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(256 * 1024 * 1024)
    orch = Orchestrator(Settings(cache_dir=""), registry=make_registry())
    buf = io.StringIO()
    tracemalloc.start()
    try:
        s = run_batch([big], orch, stream=buf, experts=["ocr"], progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    line = json.loads(buf.getvalue())
    assert line["status"] == "error" and "256.0 MiB, over the 64.0 MiB limit" in line["error"]
    assert s.failed == 1
    assert peak < 16 * 1024 * 1024, f"read {peak / 2**20:.0f} MiB of a file refused by its size"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifos_and_devices_are_one_error_line_each_never_read(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    good = tmp_path / "good.png"
    good.write_bytes(_png(3))
    orch = Orchestrator(Settings(cache_dir=""), registry=make_registry())
    buf = io.StringIO()
    box: dict = {}
    t = threading.Thread(
        target=lambda: box.update(
            s=run_batch([fifo, zero, good], orch, stream=buf, experts=["ocr"], workers=1, progress=False)
        ),
        daemon=True,
    )
    t.start()
    t.join(20)
    if t.is_alive():  # unblock a reader stuck on the FIFO before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("batch hung on a FIFO")
    lines = {Path(x["path"]).name: x for x in map(json.loads, buf.getvalue().splitlines())}
    assert lines["good.png"]["status"] == "ok"
    for name in ("pipe.png", "zero.png"):
        assert lines[name]["status"] == "error"
        assert "not a regular file" in lines[name]["error"] and "\n" not in lines[name]["error"]
    assert (box["s"].done, box["s"].failed) == (1, 2)
    # From the command line: the same lines, exit 0 (one image was fine), no traceback.
    runner = CliRunner()
    r = runner.invoke(cli, ["batch", str(fifo), str(zero), "--experts", "ocr", "--no-progress"])
    assert "Traceback" not in r.output
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["error", "error"]
    assert r.exit_code == 1 and "0 done, 2 failed" in r.stderr


def test_an_empty_model_answer_is_an_error_line_that_keeps_the_expert_results(tmp_path, use_registry, fake_ollama):
    (tmp_path / "a.png").write_bytes(_png(1))
    fake_ollama.responder = lambda path, body: ""
    out = tmp_path / "answers.jsonl"
    r = CliRunner().invoke(
        cli,
        [
            "batch",
            str(tmp_path),
            "-q",
            "What colour is it?",
            "--experts",
            "ocr",
            "--ollama-host",
            fake_ollama.url,
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    (line,) = lines_of(out)
    assert line["status"] == "error" and line["error"] == "the model gave no answer"
    assert line["result"]["full_text"].startswith("COLOUR")
    assert "0 done, 1 failed" in r.stderr and r.exit_code == 1

"""What `vision-router ask` shows: the model's answer without echoed scaffolding, then one line of what
the experts found (--quiet drops it, --json has it); without Ollama, the findings and then one error line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import router.commands.common as cli_mod
from router.commands import cli
from tests.conftest import png_bytes
from tests.router_experts import FakeOcr, make_registry

# What SmolLM2-135M-Instruct wrote behind the router (issue 17); TAIL is what follows its tag.
TAIL = (
    "User: [image 1 attached: 120x80 PNG; ask a vision expert with a tag to look at it]\n\n"
    "The text is written in the language of the image.\n\nThe image is written in the language of the image."
)
ECHO = f"[VISION: ocr]\n{TAIL}"
SCAFFOLDING = ("User:", "attached", "[VISION", "IMAGE CONTEXT", "language of the image")


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry()
    monkeypatch.setattr(cli_mod, "default_registry", lambda: reg)
    return reg


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "poster.png"
    p.write_bytes(png_bytes(120, 80))
    return p


def ask(image, host: str, *flags: str):
    args = ["ask", str(image), "-q", "What is written here?", "--ollama-host", host, *flags]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("flags", [(), ("--no-stream",)], ids=["streamed", "not-streamed"])
def test_answer_then_the_findings_line(fake_ollama, registry, image, flags):
    fake_ollama.script(Reply_of(f"It says {FakeOcr.text}.\n{TAIL}"))
    r = ask(image, fake_ollama.url, *flags)
    assert r.exit_code == 0, r.output
    assert r.stdout == f"It says {FakeOcr.text}.\n"
    assert r.stderr == "looked at: ocr 1 line\n"
    assert len(fake_ollama.calls("/api/chat")) == 1  # keywords decided: one turn


def test_quiet_drops_the_findings_line(fake_ollama, registry, image):
    fake_ollama.script(f"It says {FakeOcr.text}.")
    r = ask(image, fake_ollama.url, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"It says {FakeOcr.text}.\n" and r.stderr == ""


def test_json_has_the_findings_apart_from_the_answer(fake_ollama, registry, image):
    fake_ollama.script(Reply_of(f"Assistant: It says {FakeOcr.text}.\n{TAIL}"))
    r = ask(image, fake_ollama.url, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["answer"] == f"It says {FakeOcr.text}."
    assert out["findings"] == "looked at: ocr 1 line"
    assert r.stderr == ""


@pytest.mark.parametrize("reply", [TAIL, ECHO], ids=["echo", "tag-and-echo"])
def test_an_answer_that_was_only_scaffolding_is_no_answer_with_the_findings(fake_ollama, registry, image, reply):
    fake_ollama.responder = lambda path, body: Reply_of(reply)
    r = ask(image, fake_ollama.url, "--max-rounds", "1")
    assert r.exit_code == 1
    assert "The model gave no answer" in r.stdout and FakeOcr.text in r.stdout
    assert not any(s in r.stdout for s in SCAFFOLDING)
    assert r.stderr.strip().splitlines() == ["Error: the model gave no answer; the experts' findings are above"]


def test_ask_without_ollama_prints_the_findings_then_one_error_line(registry, image):
    r = ask(image, "127.0.0.1:9")
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    assert "What the experts found" in r.stdout and FakeOcr.text in r.stdout
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: cannot reach Ollama at http://127.0.0.1:9")
    # the findings come first, then the error (click's runner keeps the two streams in order in r.output)
    assert r.output.index(FakeOcr.text) < r.output.index("Error:")


def test_ask_without_ollama_and_without_keywords_shows_the_fallback_experts(registry, image):
    args = ["ask", str(image), "-q", "Anything here?", "--ollama-host", "127.0.0.1:9"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert FakeOcr.text in r.stdout and "- experts: ocr, detect" in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def Reply_of(text: str):  # noqa: N802  (reads like the fake's Reply)
    """The reply streamed in small pieces, so the filter sees every kind of split."""
    from tests.fake_ollama import Reply

    return Reply(text, chunk_size=3)


def test_the_model_is_not_read_on_once_it_writes_the_next_turn(fake_ollama):
    """Nothing after "User:" reaches the user, so the stream is closed there: the model stops generating."""
    import time

    from router.core.config import Settings
    from router.core.orchestrator import Orchestrator
    from tests.fake_ollama import Reply

    junk = "The answer is 100.\n" * 400  # 950 chunks at 50 ms: 47 s if read to the end
    fake_ollama.script(Reply(f"It says {FakeOcr.text}.\nUser: and now?\n{junk}", chunk_size=8, chunk_delay_s=0.05))
    orch = Orchestrator(Settings(ollama_host=fake_ollama.url, cache_dir=""), registry=make_registry())
    t0 = time.monotonic()
    final = orch.ask("What is written here?", [png_bytes(120, 80)])
    assert final.answer == f"It says {FakeOcr.text}."
    assert time.monotonic() - t0 < 15
    assert final.findings == "looked at: ocr 1 line"  # the Python API: the model's answer and the findings apart

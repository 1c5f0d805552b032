"""The command line: the main job, experts, demo and doctor; one-line errors, never a traceback."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

import router.commands.common as cli_mod
from router.commands import cli
from tests.conftest import png_bytes
from tests.router_experts import FakeOcr, SlowExpert, make_registry
from tests.test_images import _png_bomb


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


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for f in fragments:
        assert f in lines[0]


def test_ask_with_a_tag_streams_the_final_answer(fake_ollama, registry, image):
    fake_ollama.script("[VISION: ocr]", "It says GRAND OPENING 50% OFF.")
    r = run("ask", image, "-q", "What's on this poster?", "--ollama-host", fake_ollama.url)
    assert r.exit_code == 0, r.output
    assert r.stdout == "It says GRAND OPENING 50% OFF.\n"
    assert len(fake_ollama.calls("/api/chat")) == 2


def test_ask_json_and_trace(fake_ollama, registry, image):
    fake_ollama.script("The text reads GRAND OPENING 50% OFF.")
    r = run("ask", image, "-q", "What is written here?", "--ollama-host", fake_ollama.url, "--json", "--trace")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["answer"] == "The text reads GRAND OPENING 50% OFF."
    assert out["images"][0]["full_text"] == FakeOcr.text
    assert out["trace"]["keywords"][0]["expert"] == "ocr"
    assert len(fake_ollama.calls("/api/chat")) == 1
    assert "written" in r.stderr and "ocr" in r.stderr and "1 LLM call" in r.stderr


def test_ask_reads_stdin(fake_ollama, registry):
    fake_ollama.script("ok")
    r = CliRunner().invoke(cli, ["ask", "-", "-q", "hi", "--ollama-host", fake_ollama.url], input=png_bytes(20, 20))
    assert r.exit_code == 0 and r.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"", "empty image (0 bytes)"),
        (bytes(range(256)) * 8, "not a supported image"),
        (png_bytes(300, 300, (0, 128, 0), fmt="JPEG")[:900], "truncated or corrupt JPEG image"),
        (_png_bomb(20000), "20000x20000 = 400.0 MP, over the 50 MP limit"),
    ],
    ids=["empty", "random", "truncated", "bomb"],
)
def test_bad_images_one_line_error(fake_ollama, registry, tmp_path, content, fragment):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    r = run("ask", p, "-q", "what is written", "--ollama-host", fake_ollama.url)
    one_line_error(r, str(p), fragment)
    assert fake_ollama.calls("/api/chat") == []


def test_missing_file_and_missing_question(registry, tmp_path):
    one_line_error(run("ask", tmp_path / "nope.png", "-q", "x"), "nope.png: no such file")
    r = run("ask", tmp_path / "nope.png")
    assert r.exit_code == 2 and "--question" in r.stderr


def test_ollama_unreachable_names_host_and_fix(registry, image):
    r = run("ask", image, "-q", "what is written", "--ollama-host", "127.0.0.1:9")
    # The same set-up steps `demo` prints: Ollama may be new on this machine, the model not made yet.
    one_line_error(
        r,
        "cannot reach Ollama at http://127.0.0.1:9",
        "ollama serve",
        "`ollama pull qwen3:4b-instruct-2507-q4_K_M && ollama create qwen3-vision -f Modelfile`",
    )
    demo = run("demo", "--ollama-host", "127.0.0.1:9")
    assert "  ollama pull qwen3:4b-instruct-2507-q4_K_M\n  ollama create qwen3-vision -f Modelfile\n" in demo.stdout


def test_ask_annotates_what_the_experts_found_without_ollama(registry, image, tmp_path):
    out = tmp_path / "out" / "nested"
    r = run("ask", image, "-q", "what is written", "--ollama-host", "127.0.0.1:9", "--annotate", out)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "GRAND OPENING" in r.stdout  # the findings, as before
    (written,) = sorted(out.iterdir())
    assert written.read_bytes()[:4] == b"\x89PNG"
    lines = r.stderr.splitlines()
    assert lines[0] == f"annotated: {written}", r.stderr  # where, before the error line
    assert lines[-1].startswith("Error: cannot reach Ollama")


def test_model_missing_says_how_to_create_it(fake_ollama, registry, image):
    r = run("ask", image, "-q", "hi", "--ollama-host", fake_ollama.url, "-m", "qwen3-eyes")
    one_line_error(r, "model 'qwen3-eyes' not found", "ollama create qwen3-eyes -f Modelfile")


def test_ollama_host_env_is_honoured(fake_ollama, registry, image, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", fake_ollama.url.removeprefix("http://"))
    fake_ollama.script("from env")
    r = run("ask", image, "-q", "what is written?")
    assert r.exit_code == 0 and r.stdout.strip() == "from env"


def test_expert_list_and_run(registry, image):
    r = run("expert", "list")
    assert r.exit_code == 0
    assert "ocr" in r.stdout and "aliases: text" in r.stdout and "detect" in r.stdout
    r = run("expert", "run", "detect", image, "face", "--json")
    res = json.loads(r.stdout)
    assert res["expert"] == "detect" and res["args"] == {"query": "face"} and len(res["bbox"]) == 2
    r = run("expert", "run", "ocr", image)
    assert '- text (1 lines, reading order): "GRAND OPENING 50% OFF"' in r.stdout


def test_expert_errors(registry, image):
    one_line_error(run("expert", "run", "telepathy", image), "unknown expert 'telepathy' (available: detect, ocr)")
    one_line_error(run("expert", "run", "detect", image, "-a", "min_area=huge"), "bad argument 'min_area'")
    r = run("expert", "run", "detect", image, "-a", "novalue")
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.stderr


def test_demo_without_ollama_shows_context_and_the_commands(registry, tmp_path):
    save = tmp_path / "demo.png"
    r = run("demo", "--ollama-host", "127.0.0.1:9", "--save", save)
    assert r.exit_code == 0, r.output
    assert "[IMAGE CONTEXT]" in r.stdout and "GRAND OPENING" in r.stdout
    assert "ollama pull qwen3:4b-instruct-2507-q4_K_M" in r.stdout
    assert "ollama create qwen3-vision -f Modelfile" in r.stdout
    assert save.read_bytes()[:4] == b"\x89PNG"


def test_demo_with_ollama_answers(fake_ollama, registry):
    fake_ollama.script("An AURORA green tea box.")
    r = run("demo", "--ollama-host", fake_ollama.url)
    assert r.exit_code == 0, r.output
    assert "An AURORA green tea box." in r.stdout
    (chat,) = fake_ollama.calls("/api/chat")
    assert "[IMAGE CONTEXT]" in chat["messages"][-1]["content"]


def test_demo_with_model_missing(fake_ollama, registry):
    r = run("demo", "--ollama-host", fake_ollama.url, "-m", "absent")
    assert r.exit_code == 0 and "model 'absent' is missing" in r.stdout
    assert "ollama create absent -f Modelfile" in r.stdout


def test_doctor(fake_ollama, registry):
    r = run("doctor", "--ollama-host", fake_ollama.url)
    assert r.exit_code == 0, r.output
    assert "[ok] ollama" in r.stdout and "'qwen3-vision' present" in r.stdout
    assert "[ok] expert ocr" in r.stdout
    r = run("doctor", "--ollama-host", fake_ollama.url, "-m", "absent", "--json")
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.exit_code == 1 and not checks["model"]["ok"] and "ollama create absent" in checks["model"]["detail"]
    r = run("doctor", "--ollama-host", "127.0.0.1:9")
    assert r.exit_code == 1 and "[!!] ollama" in r.stdout


def test_doctor_reads_the_models_system_as_the_run_loop_does(fake_ollama, registry):
    """Only the tag protocol for exactly the experts here stands in for the router's system message; an older
    protocol text (it has `[VISION:` too) is not it, and doctor says how to update the model."""
    from router.core.protocol import PROTOCOL_PROMPT
    from tests.fake_ollama import FakeModel

    fake_ollama.add_model(FakeModel("current", system=PROTOCOL_PROMPT))
    fake_ollama.add_model(FakeModel("older", system="You cannot see. Write [VISION: ocr] to read text."))

    def model_line(model):
        r = run("doctor", "--ollama-host", fake_ollama.url, "-m", model)
        (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("[ok] model")]
        return line

    assert model_line("current").endswith("its SYSTEM teaches the tag protocol for the experts here (detect, ocr)")
    assert model_line("older").endswith(
        "its SYSTEM holds an older tag protocol, so the router sends the current one as a system message; "
        "to update the model: `ollama pull qwen3:4b-instruct-2507-q4_K_M && ollama create older -f Modelfile`"
    )
    assert model_line("qwen3-vision").endswith("no tag protocol in its SYSTEM: the router sends it as a system message")
    registry.register(SlowExpert)  # one more expert can run here than the Modelfile teaches
    assert model_line("current").endswith(
        "its SYSTEM teaches the Modelfile's experts; the experts here differ (detect, ocr, slow), so the router "
        "sends their tag protocol as a system message"
    )


def test_config_file_errors_are_one_line(registry, tmp_path, image):
    cfg = tmp_path / "config.toml"
    cfg.write_text("max_rounds = 'many'\n", "utf-8")
    one_line_error(run("--config", cfg, "ask", image, "-q", "x"), "max_rounds")
    cfg.write_text("colour = 'blue'\n", "utf-8")
    one_line_error(run("--config", cfg, "ask", image, "-q", "x"), "colour")


class EndlessStdin(io.RawIOBase):
    """A pipe that never ends (``< /dev/zero``), counting what was read; it gives up past ``cap`` so the
    code before the fix fails the test instead of eating the machine's memory."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.read_bytes = 0
        self.cap = cap

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = len(b)
        if self.read_bytes + n > self.cap:
            raise AssertionError(f"read past {self.cap} bytes of an endless pipe")
        b[:n] = bytes(n)
        self.read_bytes += n
        return n


def test_endless_stdin_reads_at_most_the_limit_plus_one(registry, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("max_image_bytes = 1000000\n", "utf-8")
    pipe = EndlessStdin(cap=50_000_000)
    r = CliRunner().invoke(cli, ["--config", str(cfg), "expert", "run", "detect", "-"], input=pipe)
    one_line_error(r, "stdin", "over the", "limit")
    assert pipe.read_bytes <= 1_000_001


def test_stdin_within_the_limit_still_works(registry, image):
    r = run("expert", "run", "detect", "-", "face", "--json", input=image.read_bytes())
    assert r.exit_code == 0 and json.loads(r.stdout)["expert"] == "detect"

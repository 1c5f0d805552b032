"""The Modelfile: only instructions `ollama create` accepts, and the router's own protocol text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.core.config import BASE_MODEL
from router.core.protocol import MODELFILE_EXPERTS, PROTOCOL_PROMPT, tag_prompt

MODELFILE = Path(__file__).resolve().parents[1] / "Modelfile"
# parser/parser.go: anything else fails with `command must be one of "from", "license", ...`
COMMANDS = {"from", "license", "template", "system", "adapter", "parameter", "message", "requires"}
# api/types.go Options/Runner fields accepted by PARAMETER
PARAMETERS = {
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_last_n",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
}


def parse(text: str) -> list[tuple[str, str]]:
    """A small reading of Ollama's Modelfile grammar: COMMAND value, with \"\"\"multi-line\"\"\" values."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                body += "\n" + lines[i]
                i += 1
            value, _, tail = body.partition('"""')
            assert not tail.strip(), f"text after closing quotes: {tail!r}"
            rest = value
        out.append((cmd.lower(), rest))
    return out


def test_only_accepted_instructions():
    instructions = parse(MODELFILE.read_text("utf-8"))
    assert {c for c, _ in instructions} <= COMMANDS
    assert [v for c, v in instructions if c == "from"] == [BASE_MODEL]
    for c, v in instructions:
        if c == "parameter":
            name, value = v.split(None, 1)
            assert name in PARAMETERS, name
            assert re.fullmatch(r"-?[0-9.]+|true|false|\".*\"", value), value


def test_system_prompt_is_the_router_protocol_for_the_offline_experts():
    """The Modelfile teaches what runs offline after the quick-start install (the router's prompt for exactly
    that set), so a model made from it needs no system message from the router there."""
    systems = [v for c, v in parse(MODELFILE.read_text("utf-8")) if c == "system"]
    assert systems == [PROTOCOL_PROMPT] == [tag_prompt(dict.fromkeys(MODELFILE_EXPERTS, ""))]
    assert '"""' not in PROTOCOL_PROMPT
    assert "[VISION: clip" not in PROTOCOL_PROMPT and "[VISION: caption" not in PROTOCOL_PROMPT


def test_quick_start_install_runs_the_modelfile_experts_offline(monkeypatch):
    """ocr (bundled ONNX models) and detect (OpenCV's own files) need no download: what the Modelfile teaches."""
    from experts.registry import Registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = Registry()
    reg.load_entry_points()
    for name in MODELFILE_EXPERTS:
        if name == "ocr":
            pytest.importorskip("rapidocr", reason="needs the [onnx] extra")
        assert reg.can_run(name), reg.unavailable(name)


def test_protocol_teaches_every_builtin_tag_in_both_languages():
    prompt = tag_prompt(dict.fromkeys(("ocr", "detect", "clip", "caption"), ""))
    for tag in (
        "[VISION: ocr]",
        "[VISION: detect]",
        '[VISION: detect "person"]',
        "[VISION: clip]",
        "[VISION: caption]",
        "image=N",
    ):
        assert tag in prompt
    assert "文字" in prompt and "风格" in prompt
    assert "without any tag" in prompt  # answer normally when no image help is needed


def test_protocol_teaches_only_the_experts_given():
    prompt = tag_prompt({"ocr": "", "sketch": "Turn the picture into a line drawing."})
    assert "[VISION: ocr]" in prompt and "[VISION: sketch] - Turn the picture into a line drawing." in prompt
    for absent in ("[VISION: detect", "[VISION: clip", "[VISION: caption", "风格"):
        assert absent not in prompt  # no tag line and no example for an expert that is not there
    assert "User:" not in prompt and "Assistant:" not in prompt  # no role-prefixed turns to carry on


def test_the_package_ships_the_same_modelfile():
    """An install without a checkout (a wheel) creates the model from the copy inside the package, which
    the create hints name there: it is this Modelfile, byte for byte."""
    shipped = MODELFILE.parent / "router" / "data" / "Modelfile"
    assert shipped.read_bytes() == MODELFILE.read_bytes()

"""The Modelfile: only instructions `ollama create` accepts, and the router's own protocol text."""

from __future__ import annotations

import re
from pathlib import Path

from router.core.config import BASE_MODEL
from router.core.protocol import PROTOCOL_PROMPT

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


def test_system_prompt_is_the_router_protocol():
    systems = [v for c, v in parse(MODELFILE.read_text("utf-8")) if c == "system"]
    assert systems == [PROTOCOL_PROMPT]
    assert '"""' not in PROTOCOL_PROMPT


def test_protocol_teaches_every_builtin_tag_in_both_languages():
    for tag in (
        "[VISION: ocr]",
        "[VISION: detect]",
        '[VISION: detect "person"]',
        "[VISION: clip]",
        "[VISION: caption]",
        "image=N",
    ):
        assert tag in PROTOCOL_PROMPT
    assert "文字" in PROTOCOL_PROMPT and "风格" in PROTOCOL_PROMPT
    assert "without any tag" in PROTOCOL_PROMPT  # answer normally when no image help is needed

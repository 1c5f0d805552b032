"""The acceptance path of the core: real experts, the real `ollama` client, a fake Ollama on a socket.

The fake model behaves like the real one would: asked with an image it requests an expert with a
tag, and then answers from whatever [IMAGE CONTEXT] it was given — so the final answer can only
contain what the real OCR read or the real detector counted.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from router.commands import cli
from tests import scenes
from tests.fake_ollama import Reply

pytest.importorskip("rapidocr", reason="needs the [onnx] extra (rapidocr + onnxruntime)")


def context_echo(path: str, body: dict) -> Reply:
    """Turn 1: ask for OCR and detect. Turn 2: repeat the text lines and object counts it was given."""
    last = body["messages"][-1]["content"]
    if "[IMAGE CONTEXT]" not in last:
        return Reply("Let me look.\n[VISION: ocr]\n[VISION: detect]")
    text = re.search(r"- text \(\d+ lines?, reading order\): (.*)", last)
    objects = re.search(r"- objects: (.*)", last)
    lines = json.loads("[" + text.group(1).replace(" / ", ",") + "]") if text else []
    return Reply(f"The image says: {' | '.join(lines)}. Objects: {objects.group(1) if objects else 'none'}.")


@pytest.fixture
def poster(tmp_path):
    img = scenes.text_block(["HELLO WORLD 2026", "OPEN 9AM TO 5PM"], size=40)
    p = tmp_path / "poster.png"
    p.write_bytes(scenes.png_bytes(img))
    return p


def test_ask_with_real_ocr_in_one_turn(fake_ollama, poster):
    """No keyword matches: the semantic router decides by meaning, or the fallback experts look; either way the
    real OCR reads before the model's one LLM call."""
    fake_ollama.responder = context_echo
    r = CliRunner().invoke(
        cli, ["ask", str(poster), "-q", "Tell me about this poster", "--ollama-host", fake_ollama.url, "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["answer"].startswith("The image says: HELLO WORLD 2026 | OPEN 9AM TO 5PM.")
    chats = fake_ollama.calls("/api/chat")
    assert len(chats) == 1
    assert "ocr" in [e["expert"] for e in out["trace"]["experts"]] and out["trace"]["semantic"]
    assert all("images" not in m for c in chats for m in c["messages"])


def test_ask_two_turns_with_real_ocr_when_the_model_decides(fake_ollama, poster, tmp_path):
    fake_ollama.responder = context_echo
    cfg = tmp_path / "config.toml"
    cfg.write_text("semantic = false\nfallback = []\n", "utf-8")
    args = ["--config", str(cfg), "ask", str(poster), "-q", "Tell me about this poster", "--ollama-host"]
    r = CliRunner().invoke(cli, [*args, fake_ollama.url, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["answer"].startswith("Let me look.\nThe image says: HELLO WORLD 2026 | OPEN 9AM TO 5PM.")
    assert len(fake_ollama.calls("/api/chat")) == 2
    assert [e["expert"] for e in out["trace"]["experts"]] == ["ocr", "detect"]


def test_ask_keyword_single_turn_with_real_ocr(fake_ollama, poster):
    fake_ollama.responder = context_echo
    r = CliRunner().invoke(cli, ["ask", str(poster), "-q", "What is written on it?", "--ollama-host", fake_ollama.url])
    assert r.exit_code == 0, r.output
    assert "HELLO WORLD 2026 | OPEN 9AM TO 5PM" in r.stdout
    assert len(fake_ollama.calls("/api/chat")) == 1


def test_expert_run_ocr_json_returns_the_text(poster):
    r = CliRunner().invoke(cli, ["expert", "run", "ocr", str(poster), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [t["text"] for t in res["text"]] == ["HELLO WORLD 2026", "OPEN 9AM TO 5PM"]


def test_expert_run_detect_counts_drawn_shapes_exactly(tmp_path):
    scene = scenes.standard_shapes()
    p = tmp_path / "shapes.png"
    p.write_bytes(scenes.png_bytes(scene.image))
    r = CliRunner().invoke(cli, ["expert", "run", "detect", str(p), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["measurements"]["count"] == len(scene.shapes) == 7
    assert sorted(b["label"] for b in res["bbox"]) == sorted(s.kind for s in scene.shapes)

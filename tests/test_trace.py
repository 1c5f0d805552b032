"""The trace of a request: a compact table for people, JSON and a summary for machines."""

from __future__ import annotations

from router.core.trace import LLMCall, Trace, TraceExpert, render_trace, trace_json, trace_summary
from tests.conftest import png_bytes
from tests.router_experts import make_registry


def full_trace() -> Trace:
    return Trace(
        model="qwen3-vision",
        images=[{"index": 1, "width": 960, "height": 640, "format": "PNG", "image_id": "ab" * 32}],
        keywords=[{"expert": "detect", "keyword": "how many", "args": {"query": "person"}}],
        tags=["[VISION: ocr]"],
        ignored_tags=["[VISION: clip]"],
        malformed_tags=["[VISION: 42]"],
        experts=[
            TraceExpert(
                expert="detect", image=1, args={"query": "person"}, source="keyword", timing_ms=12.345, cached=False
            ),
            TraceExpert(expert="ocr", image=1, source="tag", timing_ms=0.2, cached=True),
            TraceExpert(
                expert="caption",
                image=1,
                source="tag",
                timing_ms=1500.0,
                cached=False,
                error="caption: engine not installed: pip install 'ollama-vision-router[caption]'",
            ),
        ],
        llm_calls=[
            LLMCall(
                turn=1, prompt_eval_count=512, eval_count=9, total_ms=230.4, first_token_ms=40.2, tags=["[VISION: ocr]"]
            ),
            LLMCall(
                turn=2,
                prompt_eval_count=900,
                eval_count=80,
                total_ms=1200.0,
                first_token_ms=35.0,
                tool_calls=["vision_caption"],
            ),
        ],
        rounds=2,
        protocol_injected=True,
        system_prompts=["tag protocol"],
        cache={"hits": 3, "misses": 5},
        total_ms=1600.0,
    )


def test_render_trace_shows_the_decision_path():
    text = render_trace(full_trace())
    lines = text.splitlines()
    assert lines[0] == (
        "trace: qwen3-vision | 1 image (960x640 PNG) | 2 expert rounds | 2 LLM calls "
        "(1412 prompt + 89 output tokens) | 1600 ms"
    )
    assert "  keyword    'how many' -> detect query=person" in lines
    assert "  tag        [VISION: ocr]" in lines
    assert "  ignored    [VISION: clip] (no expert rounds left)" in lines
    assert "  malformed  [VISION: 42]" in lines
    assert "  protocol   tag protocol sent as a system message" in lines
    i = lines.index("  experts")
    header, detect, ocr, caption = lines[i + 1 : i + 5]
    assert header.split() == ["expert", "image", "asked", "by", "ms", "cache", "result"]
    assert detect.split() == ["detect", "query=person", "1", "keyword", "12.3", "miss", "ok"]
    assert ocr.split() == ["ocr", "1", "tag", "0.2", "hit", "ok"]
    assert caption.split()[:6] == ["caption", "1", "tag", "1500.0", "miss", "error:"]
    # columns line up: every row starts its "ms" cell at the same place
    assert len({row.index("miss") if "miss" in row else row.index("hit") for row in (detect, ocr, caption)}) == 1
    j = lines.index("  llm calls")
    assert lines[j + 2].split() == ["1", "512", "9", "230", "40", "[VISION:", "ocr]"]
    assert lines[j + 3].split() == ["2", "900", "80", "1200", "35", "vision_caption()"]
    assert lines[j + 4].split() == ["all", "1412", "89", "1430"]
    assert lines[-1] == "  cache      this request 1/3 hits; process 3 hits / 5 misses"


def test_render_trace_when_nothing_was_asked():
    text = render_trace(Trace(model="m", total_ms=12.0))
    assert text.splitlines() == [
        "trace: m | 0 images | 0 expert rounds | 0 LLM calls (0 prompt + 0 output tokens) | 12 ms",
        "  decision   no expert was asked for",
    ]


def test_long_values_are_clipped_to_keep_the_table_compact():
    t = full_trace()
    t.experts[2].error = "x" * 500
    row = next(ln for ln in render_trace(t).splitlines() if ln.strip().startswith("caption"))
    assert len(row) < 140 and row.endswith("\u2026")


def test_summary_and_json():
    t = full_trace()
    s = trace_summary(t)
    assert s == {
        "model": "qwen3-vision",
        "images": 1,
        "keywords": ["detect"],
        "tags": 1,
        "malformed_tags": 1,
        "ignored_tags": 1,
        "experts": 3,
        "expert_errors": 1,
        "cache_hits": 1,
        "expert_ms": 1512.55,
        "llm_calls": 2,
        "prompt_tokens": 1412,
        "output_tokens": 89,
        "rounds": 2,
        "fallback": False,
        "semantic": None,
        "filtered": 0,
        "total_ms": 1600.0,
    }
    data = trace_json(t)
    assert data["llm_calls"][1]["tool_calls"] == ["vision_caption"]
    assert Trace.model_validate(data) == t
    # older traces (without tool_calls) still load
    del data["llm_calls"][1]["tool_calls"]
    assert Trace.model_validate(data).llm_calls[1].tool_calls == []


def test_trace_of_a_real_request(fake_ollama):
    from router.core.config import Settings
    from router.core.orchestrator import Orchestrator

    fake_ollama.script("[VISION: ocr]", "It says GRAND OPENING.")
    settings = Settings(ollama_host=fake_ollama.url, cache_dir="", semantic=False, fallback=[])
    orch = Orchestrator(settings, registry=make_registry())
    final = orch.ask("Tell me about this poster", [png_bytes(80, 60)])
    text = render_trace(final.trace)
    assert text.startswith("trace: qwen3-vision | 1 image (80x60 PNG) | 1 expert round | 2 LLM calls")
    assert "  tag        [VISION: ocr]" in text
    assert any(ln.split()[:3] == ["ocr", "1", "tag"] for ln in text.splitlines())


def test_ask_trace_names_the_system_prompt_it_sent(fake_ollama, monkeypatch, tmp_path):
    """Keywords decided: the model got the answer prompt (no tags), and the trace says that one; the model
    decides (after the fallback experts looked): the tag protocol."""
    from click.testing import CliRunner

    import router.commands.common as cli_mod
    from router.commands import cli

    reg = make_registry()
    monkeypatch.setattr(cli_mod, "default_registry", lambda: reg)
    image = tmp_path / "poster.png"
    image.write_bytes(png_bytes(120, 80))

    cfg = tmp_path / "config.toml"
    cfg.write_text("semantic = false\n", "utf-8")

    def protocol_row(question):
        args = ["--config", str(cfg), "ask", str(image), "-q", question, "--ollama-host", fake_ollama.url, "--trace"]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        (row,) = [line for line in r.stderr.splitlines() if line.startswith("  protocol ")]
        return row.split(None, 1)[1]

    fake_ollama.script("It says GRAND OPENING.")
    assert protocol_row("What is written here?") == "answer prompt (the findings, no tags) sent as a system message"
    fake_ollama.script('[VISION: detect "face"]', "One face; it says GRAND OPENING.")
    assert protocol_row("Tell me about it") == "tag protocol sent as a system message"

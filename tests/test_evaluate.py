"""The routing benchmark: scripted answers from the fake Ollama give exactly the scores computed by hand."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import router.apps.evaluate as ev_mod
import router.commands.common as common_mod
from experts.errors import VisionRouterError
from router.apps.evaluate import Case, evaluator_from_registry, load_suite, render_report, score
from router.commands import cli
from router.core import protocol
from router.core.config import BASE_MODEL
from router.core.errors import ModelNotFound, OllamaUnreachable
from router.core.keywords import KeywordRouter
from router.core.protocols import TOOLS, taught
from tests.fake_ollama import FakeModel, Reply
from tests.router_experts import make_registry

# A small table of our own, so the expected figures do not move when the shipped table grows.
RULES = [
    {"expert": "ocr", "keywords": ["sign", "read"]},
    {"expert": "detect", "keywords": ["how many", "measure"]},
    {"expert": "clip", "keywords": ["style"]},
    {"expert": "caption", "keywords": ["describe"]},
]

SUITE = """
version = 1
image = { width = 800, height = 600, format = "JPEG" }
cases = [
  { id = "c1", expect = ["ocr"], prompt = "What does the sign say?" },
  { id = "c2", expect = ["detect"], prompt = "How many apples are there?" },
  { id = "c3", expect = ["clip"], accept = ["caption"], prompt = "Does this look like Monet?" },
  { id = "c4", expect = [], images = 0, prompt = "What is the capital of France?" },
  { id = "c5", expect = [], prompt = "Thanks!" },
  { id = "c6", expect = ["caption"], prompt = "Describe it." },
  { id = "c7", lang = "zh", expect = ["ocr", "detect"], prompt = "Read the label and measure the box." },
]
"""

# What the model answers in turn 1, per prompt.
ANSWERS = {
    "What does the sign say?": "[VISION: ocr]",  # right
    "How many apples are there?": "Let me look.\n[VISION: ocr]",  # wrong expert
    "Does this look like Monet?": "[VISION: caption]\n[VISION: clip]",  # right, plus an accepted one
    "What is the capital of France?": "Paris.",  # right: no expert
    "Thanks!": "[VISION: caption",  # unneeded, and unclosed
    "Describe it.": "[VISION: 42]",  # malformed: asks nothing
    "Read the label and measure the box.": "[VISION: text]\n[VISION: zoom]",  # alias of ocr + an unknown
}


@pytest.fixture
def suite_file(tmp_path):
    p = tmp_path / "suite.toml"
    p.write_text(SUITE, encoding="utf-8")
    return p


@pytest.fixture
def evaluator():
    return evaluator_from_registry(make_registry(), KeywordRouter(RULES))


def responder(path, body):
    prompt = body["messages"][-1]["content"].split("\n")[-1]
    return ANSWERS[prompt]


def as_tuple(score_dict):
    return score_dict["precision"], score_dict["recall"]


def test_scripted_model_scores_exactly(fake_ollama, suite_file, evaluator):
    fake_ollama.responder = responder
    report = evaluator.run(load_suite(suite_file), model="qwen3-vision", host=fake_ollama.url)
    data = report.as_dict()
    model = data["systems"]["model"]
    # by hand: ocr TP c1,c7 FP c2; detect FN c2,c7; clip TP c3; caption FP c5 FN c6 (c3 accepted)
    assert as_tuple(model["experts"]["ocr"]) == (round(2 / 3, 4), 1.0)
    assert as_tuple(model["experts"]["detect"]) == (None, 0.0)
    assert as_tuple(model["experts"]["clip"]) == (1.0, 1.0)
    assert as_tuple(model["experts"]["caption"]) == (0.0, 0.0)
    assert model["overall"] == {"tp": 3, "fp": 3, "fn": 3, "support": 6, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert model["exact"] == 3 and model["prompts"] == 7
    assert model["no_expert"] == {"prompts": 2, "ok": 1, "asked_wrongly": 1, "rate": 0.5}
    assert model["silent"] == 1

    kw = data["systems"]["keywords"]
    assert {e: as_tuple(v) for e, v in kw["experts"].items()} == {
        "ocr": (1.0, 1.0),
        "detect": (1.0, 1.0),
        "clip": (None, 0.0),
        "caption": (1.0, 1.0),
    }
    assert (kw["overall"]["tp"], kw["overall"]["fp"], kw["overall"]["fn"]) == (5, 0, 1)
    assert kw["exact"] == 6 and kw["no_expert"]["ok"] == 2 and kw["silent"] == 1

    # router: keywords where they matched (c1 c2 c6 c7), else the model (c3 c4 c5) less what the run loop
    # drops: only ocr and detect can run here, so c3's caption+clip and c5's caption are dropped (issue 17)
    rt = data["systems"]["router"]
    assert as_tuple(rt["experts"]["caption"]) == (1.0, 1.0)
    assert (rt["overall"]["tp"], rt["overall"]["fp"], rt["overall"]["fn"]) == (5, 0, 1)
    assert rt["exact"] == 6 and rt["no_expert"]["ok"] == 2
    assert [c["dropped"] for c in data["cases"]] == [[], [], ["caption", "clip"], [], ["caption"], [], []]

    st = data["model_stats"]
    assert (st["calls"], st["errors"], st["malformed_tags"], st["unclosed_tags"], st["unknown_experts"]) == (
        7,
        0,
        1,
        1,
        1,
    )
    assert st["tags"] == 7 and st["tool_calls"] == 0
    # one LLM call each: keywords decided, no image, or nothing left to run (no fallback experts here)
    assert st["router_llm_calls"] == {"mean": 1.0, "1": 7} and st["dropped_asks"] == 3
    assert "LLM calls/request" in render_report(report)
    assert all(c["model"]["latency_ms"] > 0 for c in data["cases"])
    assert data["cases"][6]["model"]["asked"] == ["ocr", "?zoom"]
    assert data["cases"][6]["keyword_hits"] == ["read -> ocr", "measure -> detect"]
    assert data["prompts"] == 7 and data["languages"] == {"en": 6, "zh": 1}


def test_llm_calls_one_unless_the_model_asks_for_an_expert_that_has_not_looked(fake_ollama, suite_file):
    """Nobody decided: the fallback experts look before the model's one turn; a second call only when the
    model asks for an expert that can run and has not looked (c5 asks for detect)."""
    answers = dict(ANSWERS, **{"Thanks!": "[VISION: detect]"})
    fake_ollama.responder = lambda path, body: answers[body["messages"][-1]["content"].split("\n")[-1]]
    for fallback, expected in ((["ocr", "clip"], [1, 1, 1, 1, 2, 1, 1]), (["ocr", "detect"], [1] * 7)):
        ev = evaluator_from_registry(make_registry(), KeywordRouter(RULES), fallback=fallback)
        report = ev.run(load_suite(suite_file), model="qwen3-vision", host=fake_ollama.url)
        assert [r.llm_calls for r in report.cases] == expected, fallback
    assert report.model_stats()["router_llm_calls"] == {"mean": 1.0, "1": 7}


def test_turn_one_is_sent_as_the_orchestrator_sends_it(fake_ollama, suite_file, evaluator):
    fake_ollama.responder = responder
    evaluator.run(load_suite(suite_file), model="qwen3-vision", host=fake_ollama.url, limit=4)
    chats = fake_ollama.calls("/api/chat")
    assert len(chats) == 4  # --limit
    first = chats[0]
    note = protocol.image_note(1, 800, 600, "JPEG")
    assert first["messages"] == [
        {"role": "system", "content": protocol.PROTOCOL_PROMPT},
        {"role": "user", "content": f"{note}\nWhat does the sign say?"},
    ]
    assert first["options"] == {"num_predict": ev_mod.DEFAULT_MAX_TOKENS}
    assert first.get("stream", True) is True and not first.get("tools")
    assert chats[3]["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}  # no image


def test_model_with_the_protocol_in_its_system_gets_no_system_message(fake_ollama, suite_file, evaluator):
    fake_ollama.add_model(FakeModel("qwen3-vision", system=protocol.PROTOCOL_PROMPT))
    fake_ollama.responder = responder
    report = evaluator.run(load_suite(suite_file), model="qwen3-vision", host=fake_ollama.url, limit=1)
    assert [m["role"] for m in fake_ollama.calls("/api/chat")[0]["messages"]] == ["user"]
    assert report.protocol_injected is False


def test_tools_protocol_counts_tool_calls(fake_ollama, suite_file, evaluator):
    def tools_responder(path, body):
        prompt = body["messages"][-1]["content"].split("\n")[-1]
        if prompt.startswith("What does the sign"):
            return Reply(tool_calls=[{"function": {"name": "vision_ocr", "arguments": {}}}])
        if prompt.startswith("How many"):
            return Reply(tool_calls=[{"function": {"name": "detect", "arguments": {}}}])  # not our tool name
        return Reply(content="[VISION: clip]")  # tags still count under the tools protocol

    fake_ollama.responder = tools_responder
    report = evaluator.run(
        load_suite(suite_file), model="qwen3-vision", host=fake_ollama.url, protocol_mode="tools", limit=3
    )
    body = fake_ollama.calls("/api/chat")[0]
    names = [t["function"]["name"] for t in body["tools"]]
    # the experts that can run here, from router.core.toolspec: never one that cannot (issue 17)
    assert names == ["vision_detect", "vision_ocr"]
    assert body["messages"][0] == {"role": "system", "content": TOOLS.prompt_for(taught(make_registry()))}
    turns = [r.turn for r in report.cases]
    assert turns[0].tool_calls == ["vision_ocr"] and turns[0].asked == ["ocr"]
    assert turns[1].asked == ["?detect"] and turns[1].unknown == ["detect"]
    assert turns[2].asked == ["clip"]
    m = report.scores()["model"]
    assert (m.overall.tp, m.overall.fp, m.overall.fn) == (2, 1, 1)
    assert "--protocol tools" in render_report(report)


def test_upstream_errors(fake_ollama, suite_file, evaluator):
    suite = load_suite(suite_file)
    with pytest.raises(ModelNotFound, match="model 'nope' not found"):
        evaluator.run(suite, model="nope", host=fake_ollama.url)
    with pytest.raises(OllamaUnreachable, match="cannot reach Ollama"):
        evaluator.run(suite, model="qwen3-vision", host="127.0.0.1:9")
    # one failing prompt is reported and left out of the model's scores, not fatal
    fake_ollama.script(Reply(status=500, error="out of memory"), "[VISION: detect]")
    report = evaluator.run(suite, model="qwen3-vision", host=fake_ollama.url, limit=2)
    assert report.cases[0].turn.error == "500: out of memory"
    assert report.model_stats()["errors"] == 1
    m = report.scores()["model"]
    assert m.prompts == 1 and m.experts["detect"].tp == 1


def test_score_accept_and_unknown_by_hand():
    cases = [
        Case("a", "p", frozenset({"ocr"}), frozenset({"caption"})),
        Case("b", "p", frozenset()),
        Case("c", "p", frozenset({"detect", "clip"})),
    ]
    s = score(
        "x",
        [(cases[0], ["ocr", "caption"]), (cases[1], ["?zoom"]), (cases[2], ["clip"])],
        ["ocr", "detect", "clip", "caption"],
    )
    assert (s.overall.tp, s.overall.fp, s.overall.fn) == (2, 1, 1)
    assert s.experts["caption"].fp == 0 and s.experts["caption"].precision is None
    assert s.experts["detect"].recall == 0.0 and s.experts["clip"].precision == 1.0
    assert s.exact == 1 and s.none_ok == 0 and s.silent == 0


def test_shipped_suite_covers_the_issue():
    suite = load_suite()
    assert len(suite.cases) >= 120
    langs = [c.lang for c in suite.cases]
    assert langs.count("zh") >= 50 and langs.count("en") >= 50
    cats = {c.category for c in suite.cases}
    assert {"read-text", "logo", "watermark", "size", "count", "style", "describe", "vqa", "none", "multi"} <= cats
    assert all(not c.expect for c in suite.cases if c.category == "none")
    assert sum(1 for c in suite.cases if not c.expect) >= 20
    assert all(c.expect for c in suite.cases if c.category not in ("none", "size"))


def test_keyword_router_alone_on_the_shipped_suite():
    ev = evaluator_from_registry(make_registry(), KeywordRouter.from_toml())
    report = ev.run(load_suite())
    assert report.model is None and set(report.scores()) == {"keywords"}
    text = render_report(report)
    assert "keyword router only (no LLM)" in text and "ocr" in text and "exact expert set" in text


def test_suite_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('cases = [ { id = "x", expect = ["zoom"], prompt = "hi" } ]', encoding="utf-8")
    with pytest.raises(VisionRouterError, match="case 'x': unknown expert 'zoom'"):
        load_suite(bad)
    bad.write_text('cases = [ { id = "x", prompt = "hi" } ]', encoding="utf-8")
    with pytest.raises(VisionRouterError, match="needs `expect`"):
        load_suite(bad)
    with pytest.raises(VisionRouterError, match="suite not found"):
        load_suite(tmp_path / "missing.toml")


def test_jsonl_suites(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(
        '{"id": "j1", "prompt": "图上写了什么？", "expect": ["ocr"]}\n\n'
        '{"id": "j2", "prompt": "hi", "expect": [], "images": 0}\n',
        encoding="utf-8",
    )
    suite = load_suite(p)
    assert [c.id for c in suite.cases] == ["j1", "j2"] and suite.cases[0].lang == "zh"


# --- the command --------------------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path, monkeypatch, suite_file):
    monkeypatch.setattr(common_mod, "default_registry", lambda: make_registry())
    table = tmp_path / "kw.toml"
    table.write_text(
        "\n".join(f'[[rule]]\nexpert = "{r["expert"]}"\nkeywords = {json.dumps(r["keywords"])}\n' for r in RULES),
        encoding="utf-8",
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'keywords_file = "{table}"\n', encoding="utf-8")
    return cfg


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_eval_json_reproduces_the_scripted_scores(fake_ollama, cli_env, suite_file):
    fake_ollama.responder = responder
    r = run("--config", cli_env, "eval", "--suite", suite_file, "--ollama-host", fake_ollama.url, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["model"] == "qwen3-vision" and data["protocol"] == "tags"
    assert data["systems"]["model"]["overall"]["precision"] == 0.5
    assert data["systems"]["keywords"]["exact"] == 6


def test_cli_eval_table(fake_ollama, cli_env, suite_file):
    fake_ollama.responder = responder
    r = run(
        "--config",
        cli_env,
        "eval",
        "--suite",
        suite_file,
        "--ollama-host",
        fake_ollama.url,
        "--model",
        "qwen3-vision",
        "--max-tokens",
        "0",
    )
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "model qwen3-vision" in out and "model turn 1" in out and "router" in out and "semantic" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    assert rows["ocr"][:5] == ["ocr", "2", "1.00", "1.00", "1.00"]  # keywords column first, then meaning
    assert rows["ocr"][8:11] == ["0.67", "1.00", "0.80"]  # then the model
    assert rows["detect"][8:11] == ["-", "0.00", "-"]
    assert "malformed tags 1" in out and "unclosed 1" in out
    assert "options" not in fake_ollama.calls("/api/chat")[0]  # --max-tokens 0: no cap


def test_cli_eval_keywords_only_needs_no_ollama(cli_env, suite_file):
    r = run(
        "--config", cli_env, "eval", "--suite", suite_file, "--keywords-only", "--ollama-host", "127.0.0.1:9", "--json"
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert list(data["systems"]) == ["keywords"] and "model_stats" not in data


def test_cli_eval_errors_are_one_line(fake_ollama, cli_env, suite_file, tmp_path):
    r = run("--config", cli_env, "eval", "--suite", suite_file, "--ollama-host", fake_ollama.url, "-m", "nope")
    assert r.exit_code == 1 and "Traceback" not in r.output
    # the same line as `ask` and the proxy give (one gateway maps Ollama's errors)
    assert r.stderr.strip().splitlines() == [
        f"Error: model 'nope' not found at {fake_ollama.url}: create it with "
        f"`ollama pull {BASE_MODEL} && ollama create nope -f Modelfile`"
    ]
    r = run("--config", cli_env, "eval", "--suite", tmp_path / "none.toml", "--keywords-only")
    assert r.exit_code == 1 and r.stderr.startswith("Error: suite not found")


def test_turn_one_is_the_run_loops_own(fake_ollama, suite_file, evaluator):
    """eval builds turn 1 with the run loop's functions: byte for byte what `ask` sends for the same
    prompt and image, and, like the run loop, no protocol prompt when no image is attached."""
    from router.core.config import Settings
    from router.core.orchestrator import Orchestrator
    from tests.conftest import png_bytes

    fake_ollama.responder = responder
    suite = load_suite(suite_file)
    evaluator.run(suite, model="qwen3-vision", host=fake_ollama.url, limit=4)
    from_eval = fake_ollama.calls("/api/chat")
    fake_ollama.reset()
    fake_ollama.script("Thanks.")
    orch = Orchestrator(  # the model-decides path: no keyword, no semantic route, no fallback
        Settings(ollama_host=fake_ollama.url, cache_dir="", fallback=[], semantic=False),
        registry=make_registry(),
        keywords=KeywordRouter([]),
    )
    orch.ask("What does the sign say?", [png_bytes(800, 600, fmt="JPEG")])
    (from_ask,) = fake_ollama.calls("/api/chat")
    assert from_eval[0]["messages"] == from_ask["messages"]
    assert [m["role"] for m in from_eval[3]["messages"]] == ["user"]  # c4: no image, no protocol

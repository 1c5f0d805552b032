"""What the user reads of a reply: echoed scaffolding out, loops cut, ordinary answers untouched, and
the same text however the stream was chunked; the findings line built from structured results."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experts.schema import BBox, ExpertResult, ImageAnalysis, Style, TextLine
from router.core import protocol
from router.core.answer_text import MAX_REPEATS, MIN_LINE_CHARS, AnswerFilter, clean_answer
from router.core.context import render_context
from router.core.findings import findings_line
from router.core.tags import TagParser

# What SmolLM2-135M-Instruct replied behind the router (issue 17), tags still in.
REAL_ECHO = (
    "[VISION: ocr]\nUser: [image 1 attached: 384x191 PNG; ask a vision expert with a tag to look at it]\n\n"
    "The text is written in the language of the image.\n\nThe image is written in the language of the image.\n\n"
    "The image is written in the language of the image.\n\nThe image is written in the language of the image."
)

# Two more first replies of the real tiny model (tests/real_ollama.py) to keyword-decided questions.
REAL_LOOP = "[image 1 attached: 384x191 PNG; ask a vision expert with a tag to look at it]\n\nThe answer is:\n\n" * 6
REAL_PROMPT_ECHO = (
    "[image 1 attached: 384x191 PNG; ask a vision expert with a tag to look at it]\n\nThe results come back in an "
    "[IMAGE CONTEXT] block. Answer from them, in the user's language, and say plainly when they do not contain "
    "the answer.\n\nThe results come back in an [IMAGE CONTEXT] block. Answer from them; ask for another expert "
    "only if they cannot answer.\n\nThe results come back in an [IMAGE CONTEXT] block. Answer from them; ask for "
    "another expert only if they cannot"
)

ORDINARY = [
    "The sign says STOP.",
    "It says GRAND OPENING 50% OFF.",
    "There are 24 coins in the picture.",
    "The user asked about the logo; it reads ACME [1].",
    "Here is the list:\n- user: alice\n- system: linux\n\nThe second [image] shows a cat.",
    "Array indices [0] and [1] are equal: see [a] and [b, c].",
    "Assistants and users both see the same screen.",
    "1. First line\n2. Second line\n\n\nThird paragraph after two blank lines.",
    "图片上写着“有机绿茶”，价格是 $12.99。盒子上还有“20 TEA BAGS 40g”。",
    "这张图片里有 3 个人。User 这个词在这里只是普通文字。",
    'The JSON is {"user": "bob", "items": [1, 2]}.',
    "```python\nx = 1\nx = 1\nprint(x)  # the same line twice on purpose\n"
    "print(x)  # the same line twice on purpose\n```",
    "Yes. Yes. Yes.",
    "Image 1 shows a red car; image 2 shows a blue one.",
    "The results above are all I have: the text reads OPEN.",
]


def visible(reply: str) -> str:
    """A reply as the run loop hands it to the filter: tags removed by the tag parser first."""
    p = TagParser()
    text = p.feed(reply)[0] + p.close()[0]
    return clean_answer(text)


def chunked(text: str, cuts: list[int], **kw) -> str:
    f = AnswerFilter(**kw)
    out, last = [], 0
    for c in sorted(set(cuts)):
        out.append(f.feed(text[last:c]))
        last = c
    out.append(f.feed(text[last:]))
    return "".join(out) + f.close()


# --- what is taken out ----------------------------------------------------------------------------------
def test_the_real_echoes_leave_nothing_of_the_scaffolding():
    assert visible(REAL_ECHO) == ""
    assert visible(REAL_PROMPT_ECHO) == ""  # prompt sentences and their starts, inside the model's own lines
    # The loop is cut past MAX_REPEATS copies; the notes and the one cut off by the token cap go.
    assert visible(REAL_LOOP + "[image 1") == "\n\n".join(["The answer is:"] * MAX_REPEATS)


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("The sign says STOP.\nUser: thanks, and what colour is it?", "The sign says STOP."),
        ("The sign says STOP.\n  Human: next question", "The sign says STOP."),
        ("It is 7.\nSYSTEM: You are a helpful assistant", "It is 7."),
        ("1\n[image 1 attached: 384x191 PNG; ask a vision expert with a tag to look at it]", "1"),
        ("Assistant: The sign says STOP.", "The sign says STOP."),
        ("assistant：图片上写着“停”。", "图片上写着“停”。"),
        ("Two photos [images 1-2 attached] both show cats.", "Two photos  both show cats."),
        ('It reads OPEN.\n[IMAGE CONTEXT]\nImage 1 (64x48, id abc):\n- text: "OPEN"\n[/IMAGE CONTEXT]\nDone.', None),
        ("[VISION: ocr] - read text, logos, watermarks, prices, signs (文字、logo、水印、价格)\nIt says OPEN.", None),
        ("Already looked at: ocr; the results are above. Answer from them.\nIt says OPEN.", "It says OPEN."),
        ("Image 1 (384x191, id c105553667e7):\n- experts: ocr, detect\nIt says OPEN.", "It says OPEN."),
        ("It says OPEN.【VISION：ocr 】", "It says OPEN."),
    ],
)
def test_scaffolding_is_taken_out(reply, expected):
    out = visible(reply)
    if expected is not None:
        assert out == expected
    for marker in ("User:", "Human:", "SYSTEM:", "attached", "IMAGE CONTEXT", "VISION", "experts:", "looked at"):
        assert marker not in out
    assert out.strip()  # the answer part stays


def test_a_reply_that_is_only_the_protocol_prompt_leaves_nothing_long():
    left = visible(protocol.PROTOCOL_PROMPT)
    # Only lines too short to tell from an ordinary answer may stay ("Examples:").
    assert all(len(line) < MIN_LINE_CHARS for line in left.splitlines()), left


def test_an_echoed_context_block_leaves_nothing():
    a = ImageAnalysis(image_id="ab" * 32, index=1, width=64, height=48, text=[TextLine(text="OPEN", score=0.9)])
    assert visible(render_context([a], ["ocr: the engine is slow today"])) == ""


def test_a_degenerate_loop_is_cut_past_max_repeats_copies():
    loop = "The image shows a cat sitting on a mat. " * 12
    assert visible("It is a cat. " + loop) == "It is a cat. " + loop[: 40 * MAX_REPEATS - 1]
    lines = "\n".join(["The coin is round and made of metal."] * 6)
    assert visible(lines) == "\n".join(["The coin is round and made of metal."] * MAX_REPEATS)
    zh = "图片中有一只猫坐在垫子上。" * 6
    assert visible(zh) == "图片中有一只猫坐在垫子上。" * MAX_REPEATS


def test_a_repeated_sentence_is_never_cut_at_its_second_occurrence():
    text = "The box is green and white.\n\nIt says AURORA.\n\nThe box is green and white.\n\nThe price is $12.99."
    assert visible(text) == text


def test_the_findings_allow_as_many_copies_as_the_image_holds():
    """A receipt that prints one line five times: the model may write it five times (and MAX_REPEATS more)."""
    line = "1 x Espresso 2.10"
    found = [line] * 5 + ["Total 10.50"]
    answer = "\n".join([line] * 5 + ["Total 10.50"])
    assert clean_answer(answer, found=found) == answer
    looping = "\n".join([line] * (5 + MAX_REPEATS + 2) + ["Total 10.50"])
    assert clean_answer(looping, found=found) == "\n".join([line] * (5 + MAX_REPEATS))


def test_a_role_line_read_off_the_image_stays_and_an_invented_one_ends_the_turn():
    found = ["User: is the shop open on Sunday?", "Shop: yes, 10 to 4"]
    answer = "The chat reads:\nUser: is the shop open on Sunday?\nShop: yes, 10 to 4"
    assert clean_answer(answer, found=found) == answer
    assert clean_answer(answer + "\nUser: and what about Monday?", found=found) == answer
    assert clean_answer(answer) == "The chat reads:"  # without findings: the model started the next turn


def test_a_json_answer_keeps_its_repeated_lines():
    doc = '[\n  {"label": "coin", "ok": true},\n  {"label": "coin", "ok": true},\n  {"label": "coin", "ok": true}\n]'
    assert clean_answer(doc, repetition=False) == doc


# --- what is left alone ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_answers_are_untouched(text):
    assert visible(text) == text


def test_streaming_releases_ordinary_words_at_once():
    f = AnswerFilter()
    out = ""
    for piece in ["It ", "says ", "GRAND ", "OPENING ", "50% ", "OFF", "."]:
        out += f.feed(piece)
        assert out.rstrip() == "".join(["It ", "says ", "GRAND ", "OPENING ", "50% ", "OFF", "."])[: len(out)].rstrip()
    assert out == "It says GRAND OPENING 50% OFF."  # all of it before the stream ended
    # A line start that may become "User:" waits, and goes once it cannot.
    f = AnswerFilter()
    assert f.feed("Us") == ""
    assert f.feed("ually, yes.") == "Usually, yes."
    # A bracket that may become a note waits until it closes.
    f = AnswerFilter()
    assert f.feed("See [ima") == "See"
    assert f.feed("ge of a cat] here.") == " [image of a cat] here."


# --- properties -----------------------------------------------------------------------------------------
PIECES = [
    "The sign says STOP. ",
    "It says GRAND OPENING. ",
    "User: what now? ",
    "Assistant: ",
    "user",
    "Usually ",
    "[image 1 attached: 64x48 PNG] ",
    "[images 1-2 attached] ",
    "[1] ",
    "[ima",
    "ge] ",
    "[IMAGE CONTEXT]\nImage 1 (64x48, id ab12):\n- experts: ocr\n[/IMAGE CONTEXT]\n",
    "[/IMAGE CONTEXT] ",
    " - read text, logos, watermarks, prices, signs (文字、logo、水印、价格)",
    "Already looked at: ocr; the results are above. ",
    "图片上写着“有机绿茶”。",
    "The image is written in the language of the image. ",
    "\n",
    "\n\n",
    "  ",
    "```\n",
    "3.14 ",
    "【VISION：",
    "】",
    "The results come back in an [IMAGE CONTEXT] block. ",
    "Answer from them, in the user's language, and say plainly when they do not contain the answer.",
    "The answer is:",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(PIECES), max_size=14).map("".join),
    st.lists(st.integers(min_value=0, max_value=400), max_size=30),
    st.booleans(),
)
def test_any_chunking_gives_the_same_text(text, cuts, repetition):
    whole = clean_answer(text, repetition=repetition)
    assert chunked(text, [c for c in cuts if c <= len(text)], repetition=repetition) == whole
    one_by_one = AnswerFilter(repetition=repetition)
    assert "".join(one_by_one.feed(ch) for ch in text) + one_by_one.close() == whole


WORDS = st.sampled_from(
    ["the", "sign", "says", "user", "system", "assistant", "image", "[1]", "[a]", "OPEN", "7", "猫", "图片", "价格"]
)
SENTENCE = st.lists(WORDS, min_size=1, max_size=8).map(lambda ws: " ".join(ws) + ".")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(SENTENCE, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=5, unique=True))
def test_scaffolding_lines_between_ordinary_lines_are_all_that_goes(lines):
    plain = "\n".join(lines)
    noise = [
        "[image 1 attached: 64x48 PNG; ask a vision expert with a tag to look at it]",
        "Already looked at: ocr; the results are above.",
        " - count objects, measure sizes, ratios, positions, pixels (数量、尺寸、比例、像素、位置)",
    ]
    mixed = "\n".join(x for i, line in enumerate(lines) for x in (noise[i % len(noise)], line))
    expected = clean_answer(plain, repetition=False)
    assert clean_answer(mixed, repetition=False) == expected
    # ... and a next turn started by the model ends the answer there.
    assert clean_answer(mixed + "\nUser: and then?\nMore words.", repetition=False) == expected


# --- the findings line ----------------------------------------------------------------------------------
def result(expert: str, **kw) -> ExpertResult:
    return ExpertResult(image_id="ab" * 32, expert=expert, **kw)


def analysis(index: int, *results: ExpertResult) -> ImageAnalysis:
    return ImageAnalysis.merge("ab" * 32, index, list(results), 384, 191)


def test_findings_line_from_structured_results():
    ocr = result("ocr", text=[TextLine(text=f"line {i}", score=0.9) for i in range(7)])
    boxes = [BBox(label="circle", x1=0, y1=0, x2=5, y2=5) for _ in range(24)]
    detect = result("detect", bbox=boxes[:20], measurements={"count": 24})
    assert findings_line([analysis(1, ocr, detect)]) == "looked at: ocr 7 lines; detect 24 objects"
    people = result("detect", args={"query": "person"}, bbox=boxes[:1], measurements={"count": 1})
    clip = result("clip", styles=[Style(name="monet", score=0.31), Style(name="cyberpunk", score=0.52)])
    cap = result("caption", caption="a red car parked in front of a very long white building at night")
    line = findings_line([analysis(1, people, clip), analysis(2, cap, result("ocr"))])
    assert line == (
        'looked at: image 1: detect "person" 1 object; clip cyberpunk 0.52 | '
        'image 2: caption "a red car parked in front of a very lon…"; ocr no text'
    )
    failed = result("ocr", error="timed out after 60 s")
    assert findings_line([analysis(1, failed)]) == "looked at: ocr failed"
    assert findings_line([]) == ""


def test_findings_line_is_one_short_line():
    many = [result("ocr", text=[TextLine(text="x" * 500, score=0.9)] * 300)]
    line = findings_line([analysis(1, *many)])
    assert "\n" not in line and len(line) < 80 and re.fullmatch(r"looked at: ocr 300 lines", line)

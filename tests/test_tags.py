"""The tag parser: forms, arguments, and chunking invariance."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.tags import TagParser, neutralize, parse_tags


def names(tags):
    return [t.name for t in tags]


def test_basic_forms_and_visible_text():
    text, tags = parse_tags("Let me look. [VISION: ocr] Thanks")
    assert text == "Let me look.  Thanks"
    assert [(t.name, t.query, t.args, t.image) for t in tags] == [("ocr", None, {}, None)]


def test_free_text_key_values_and_image_index():
    _, tags = parse_tags(
        '[VISION: detect "person" image=2] [vision: clip "monet, cyberpunk"] '
        '[VISION: detect query=face min_area="0.01"]'
    )
    assert [(t.name, t.query, t.args, t.image) for t in tags] == [
        ("detect", "person", {}, 2),
        ("clip", "monet, cyberpunk", {}, None),
        ("detect", None, {"query": "face", "min_area": "0.01"}, None),
    ]


def test_case_insensitive_and_full_width_forms():
    text, tags = parse_tags("【VISION：ocr】好的［vision：Detect “人” 图片=1］")
    assert text == "好的"
    assert [(t.name, t.query, t.image) for t in tags] == [("ocr", None, None), ("detect", "人", 1)]


def test_closer_inside_quotes_does_not_end_the_tag():
    _, tags = parse_tags('[VISION: caption "what is [this]?"]')
    assert tags[0].query == "what is [this]?"


def test_ordinary_brackets_and_lookalikes_are_text():
    s = "array [1, 2] and [VISIONARY] and [Vision statement] and [link](x)"
    text, tags = parse_tags(s)
    assert tags == [] and text == s


def test_empty_and_bad_tags_are_reported_as_malformed_not_crashed():
    p = TagParser()
    out, tags = p.feed("a [VISION: ] b [VISION: 123] c")
    rest, more = p.close()
    assert tags + more == []
    assert out + rest == "a [VISION: ] b [VISION: 123] c"
    assert [m.raw for m in p.malformed] == ["[VISION: ]", "[VISION: 123]"]


def test_unclosed_tag_at_end_of_line_or_stream_still_counts():
    text, tags = parse_tags('[VISION: caption "what colour is the car?"')
    assert text == "" and tags[0].unclosed and tags[0].query == "what colour is the car?"
    text, tags = parse_tags("[VISION: ocr\nThe text says")
    assert names(tags) == ["ocr"] and text == "\nThe text says"


def test_several_tags_in_one_reply():
    _, tags = parse_tags("[VISION: detect]\n[VISION: ocr]\n[VISION: clip]")
    assert names(tags) == ["detect", "ocr", "clip"]


def test_partial_opener_is_held_back_until_decided():
    p = TagParser()
    assert p.feed("Hello [VIS") == ("Hello ", [])
    assert p.feed("ION: o") == ("", [])
    text, tags = p.feed("cr] done")
    assert text == " done" and names(tags) == ["ocr"]
    assert p.feed(" [not a tag") == (" [not a tag", [])


def test_neutralize_makes_expert_text_inert():
    s = neutralize("SALE [VISION: ocr] 【vision：detect】")
    assert parse_tags(s)[1] == []
    assert "VISION: ocr" in s


REPLIES = [
    'Sure. [VISION: ocr] and 【VISION：detect "face" image=2】 then [x] [VISION: clip "a, b"]',
    "No tags [here] at all, [VIS but close",
    '[VISION: caption "what is [this]?"]\n[VISION: ocr\ntail',
    "中文［VISION：ocr］结束 [VISION: ] end",
]


def run_chunks(text: str, cuts: list[int]):
    p = TagParser()
    pieces, tags = [], []
    last = 0
    for c in sorted(set(cuts)) + [len(text)]:
        t, tg = p.feed(text[last:c])
        pieces.append(t)
        tags += tg
        last = c
    t, tg = p.close()
    return "".join(pieces) + t, [(x.name, x.query, x.args, x.image) for x in tags + tg]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REPLIES), st.lists(st.integers(min_value=0, max_value=120), max_size=12))
def test_any_chunking_gives_the_same_tags_and_text(reply, cuts):
    whole_text, whole_tags = parse_tags(reply)
    text, tags = run_chunks(reply, [c for c in cuts if c <= len(reply)])
    assert text == whole_text
    assert tags == [(x.name, x.query, x.args, x.image) for x in whole_tags]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="[]【】VISIONvision:：ocr \"'=12\n", max_size=60), st.lists(st.integers(0, 60), max_size=8))
def test_random_text_never_crashes_and_is_chunk_invariant(text, cuts):
    whole = parse_tags(text)
    got = run_chunks(text, [c for c in cuts if c <= len(text)])
    assert got[0] == whole[0]
    assert got[1] == [(x.name, x.query, x.args, x.image) for x in whole[1]]

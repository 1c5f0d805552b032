"""The keyword router: zh + en table, whole words, explanations, custom tables."""

from __future__ import annotations

import pytest

from experts.errors import VisionRouterError
from router.core.keywords import KeywordRouter


@pytest.fixture(scope="module")
def kw():
    return KeywordRouter.from_toml()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("What is written on this sign?", ["ocr"]),
        ("图片上的文字是什么意思", ["ocr"]),  # 是什么 about the text is not a request to describe
        ("这个logo是哪个品牌的", ["ocr"]),  # an English keyword right next to Chinese characters
        ("这个logo和水印清楚吗", ["ocr"]),
        ("主图的尺寸和比例合适吗", ["detect"]),
        ("What's the aspect ratio and pixel size?", ["detect"]),
        ("这张图是什么风格？", ["clip"]),
        ("图里是什么？", ["caption"]),
        ("Describe this photo", ["caption"]),
        ("what is in the picture", ["caption"]),
        ("What is the capital of France?", []),
        ("Please redesign my website", []),  # "sign" inside "redesign" is not the word sign
    ],
)
def test_default_table(kw, text, expected):
    assert [m.expert for m in kw.route(text)] == expected


def test_match_explains_itself(kw):
    (m,) = kw.route("Can you read the label?")
    assert m.expert == "ocr" and m.keyword in ("read", "label")


def test_specific_detector_supersedes_generic_count(kw):
    assert [(m.expert, m.args) for m in kw.route("How many people are there?")] == [("detect", {"query": "person"})]
    assert [(m.expert, m.args) for m in kw.route("图里有几个人脸")] == [("detect", {"query": "face"})]


def test_custom_table(tmp_path):
    p = tmp_path / "kw.toml"
    p.write_text('[[rule]]\nexpert = "ocr"\nkeywords = ["serial number", "序列号"]\n', "utf-8")
    kw = KeywordRouter.from_toml(p)
    assert [m.keyword for m in kw.route("find the SERIAL   number")] == ["serial number"]
    assert [m.keyword for m in kw.route("序列号在哪")] == ["序列号"]
    assert kw.route("what is written") == []


def test_bad_tables_give_one_clear_error(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[[rule]]\nexpert = 3\n", "utf-8")
    with pytest.raises(VisionRouterError, match="rule 1"):
        KeywordRouter.from_toml(p)
    p.write_text("not toml [", "utf-8")
    with pytest.raises(VisionRouterError, match="invalid TOML"):
        KeywordRouter.from_toml(p)
    with pytest.raises(VisionRouterError, match="not found"):
        KeywordRouter.from_toml(tmp_path / "missing.toml")

"""Presets: the e-commerce main-image check as a data file, in English and Chinese, its experts and
fixed report structure, `preset list|show`, user presets by folder and by path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import experts.registry as registry_module
from experts.base import Expert, ExpertArgs
from experts.registry import Registry
from router.apps.demo import demo_image_bytes
from router.apps.presets import PresetError, detect_lang, list_presets, load_preset, prepare
from router.commands import cli
from router.commands import common as cli_module

PRESET = "ecommerce-main-image"

REPORT_EN = """## Verdict
NEEDS WORK: the product fills 23.5% of a 3:2 frame, and a logo and a price are added over the image.

## What complies
- Placement: the product box is centred (2% off centre) and fully in frame.
- One product only, no collage.
- Background: not measured (the clip expert is not installed).

## Three problems
1. Subject size: the box is 361x401 px, 23.5% of the image; the rule asks for 85% or more.
2. Aspect ratio and resolution: 960x640 px is 3:2 with a 640 px short side; the rule asks for 1:1, 800x800 px or more.
3. Added overlays: a red circle logo (141x141 px, top left) and the price "$12.99".

## Fixes
1. Scale the product so its longer side spans 850-900 px of the canvas.
2. Export a 1000x1000 px square (1:1).
3. Remove the circle logo and the price tag; keep only the text printed on the box."""


class _Args(ExpertArgs):
    query: str | None = None


class TextOcr(Expert):
    name = "ocr"
    Args = _Args
    positional = "query"

    def _analyze(self, image, args):
        return self.new_result(image, full_text="AURORA\nGREEN TEA\n有机绿茶\n$12.99")


class _MeasureArgs(ExpertArgs):
    query: str | None = None
    mode: str = "contours"


class MeasureDetect(Expert):
    name = "detect"
    Args = _MeasureArgs
    positional = "query"
    seen_args: list = []

    def _analyze(self, image, args):
        MeasureDetect.seen_args.append(args.model_dump())
        return self.new_result(
            image, objects=["1 rectangle"], measurements={"subject_fraction": 0.38, "aspect_ratio": "3:2"}
        )


class PlainDetect(Expert):
    """A detect expert without a ``mode`` argument (older engines)."""

    name = "detect"
    Args = _Args
    positional = "query"

    def _analyze(self, image, args):
        return self.new_result(image, objects=["1 rectangle"])


class StyleClip(Expert):
    name = "clip"
    Args = _Args
    positional = "query"

    def _analyze(self, image, args):
        return self.new_result(image)


def registry(*classes) -> Registry:
    reg = Registry()
    for c in classes:
        reg.register(c)
    return reg


# --- the preset file ------------------------------------------------------------------------------
def test_builtin_preset_is_listed_and_valid():
    names = [p.name for p in list_presets()]
    assert PRESET in names
    p = load_preset(PRESET)
    assert [e.name for e in p.experts] == ["ocr", "detect", "clip"]
    assert p.rules["en"] and len(p.rules["en"]) == len(p.rules["zh"])
    assert "{rules}" not in p.system("en") and "## Three problems" in p.system("en")
    assert "## 三个问题" in p.system("zh") and "纯白" in p.system("zh")


def test_prepare_english_with_measure_mode_and_optional_clip_left_out():
    MeasureDetect.seen_args = []
    prep = prepare(PRESET, None, registry=registry(TextOcr, MeasureDetect))
    assert prep.lang == "en"
    assert prep.experts == [("ocr", {}), ("detect", {"mode": "measure"})]  # clip optional, not installed
    assert prep.missing == []
    assert prep.question == "Check this product main image against the rules."
    assert "85%" in prep.system and "## What complies" in prep.system and "## Fixes" in prep.system


def test_prepare_falls_back_to_plain_detect_and_includes_clip_when_installed():
    prep = prepare(PRESET, "Also: this is for Amazon.", registry=registry(TextOcr, PlainDetect, StyleClip))
    names = dict(prep.experts)
    assert names["detect"] == {} and "background" in names["clip"]["query"]
    assert prep.question.endswith("Also: this is for Amazon.")


def test_prepare_chinese_from_the_question_or_the_name_suffix():
    prep = prepare(PRESET, "这是天猫的主图", registry=registry(TextOcr, MeasureDetect))
    assert prep.lang == "zh" and "## 修改建议" in prep.system and "这是天猫的主图" in prep.question
    assert prepare(f"{PRESET}:zh", None, registry=registry(TextOcr, MeasureDetect)).lang == "zh"
    assert prepare(f"{PRESET}:en", "中文问题", registry=registry(TextOcr, MeasureDetect)).lang == "en"


def test_missing_required_expert_is_told_to_the_model():
    prep = prepare(PRESET, None, registry=registry(MeasureDetect))
    assert [n for n, _ in prep.experts] == ["detect"]
    assert "Not checked (expert not installed): ocr (text, logo and watermark overlays)" in prep.question


def test_detect_lang(monkeypatch):
    assert detect_lang("请检查") == "zh" and detect_lang("check it") == "en"
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    assert detect_lang(None) == "zh"


# --- user presets ---------------------------------------------------------------------------------
def test_user_preset_by_path_and_by_folder(tmp_path, monkeypatch):
    text = load_preset(PRESET).source
    mine = Path(text).read_text("utf-8").replace('name = "ecommerce-main-image"', 'name = "my-shop"')
    mine = mine.replace("85% or more", "70% or more")
    path = tmp_path / "my-shop.toml"
    path.write_text(mine, "utf-8")
    prep = prepare(str(path), None, registry=registry(TextOcr, MeasureDetect))
    assert "70% or more" in prep.system

    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "my-shop.toml").write_text(mine, "utf-8")
    monkeypatch.setenv("VISION_ROUTER_PRESETS", str(folder))
    assert load_preset("my-shop").source == str(folder / "my-shop.toml")
    assert "my-shop" in [p.name for p in list_presets()]


def test_bad_presets_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [", "utf-8")
    with pytest.raises(PresetError, match="invalid TOML"):
        load_preset(str(bad))
    bad.write_text('name = "x"\nexperts = [{ nam = "ocr" }]\n', "utf-8")
    with pytest.raises(PresetError, match=r"experts\.0\.name"):
        load_preset(str(bad))
    with pytest.raises(PresetError, match="unknown preset 'nope' \\(available: .*ecommerce-main-image"):
        load_preset("nope")


def test_preset_list_and_show_commands():
    runner = CliRunner()
    r = runner.invoke(cli, ["preset", "list"])
    assert r.exit_code == 0 and PRESET in r.stdout and "电商主图合规检查" in r.stdout
    r = runner.invoke(cli, ["preset", "list", "--json"])
    assert json.loads(r.stdout)["presets"][0]["experts"] == ["ocr", "detect", "clip"]
    r = runner.invoke(cli, ["preset", "show", PRESET])
    assert r.exit_code == 0 and r.stdout.startswith("# E-commerce main-image check")
    r = runner.invoke(cli, ["preset", "show", PRESET, "--prompt", "zh"])
    assert "## 三个问题" in r.stdout
    r = runner.invoke(cli, ["preset", "show", "nope"])
    assert r.exit_code == 1 and r.output.startswith("Error: unknown preset 'nope'")


# --- the worked example: ask the demo image with the preset, against the fake Ollama ------------------
@pytest.fixture
def preset_registry(monkeypatch):
    reg = registry(TextOcr, MeasureDetect)
    monkeypatch.setattr(cli_module, "configured_registry", lambda settings: reg)
    monkeypatch.setattr(registry_module, "default_registry", lambda: reg)
    return reg


def test_ask_with_the_preset_produces_the_structured_report(tmp_path, fake_ollama, preset_registry):
    img = tmp_path / "demo.png"
    img.write_bytes(demo_image_bytes())
    fake_ollama.responder = lambda path, body: REPORT_EN
    MeasureDetect.seen_args = []
    r = CliRunner().invoke(cli, ["ask", str(img), "--preset", PRESET, "--ollama-host", fake_ollama.url, "--no-stream"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == REPORT_EN
    chats = fake_ollama.calls("/api/chat")
    assert len(chats) == 1  # the preset decided the experts: one LLM turn
    msgs = chats[0]["messages"]
    assert msgs[0]["role"] == "system" and "e-commerce image reviewer" in msgs[0]["content"]
    user = msgs[-1]["content"]
    assert "[IMAGE CONTEXT]" in user and "$12.99" in user and "subject_fraction" in user
    assert user.rstrip().endswith("Check this product main image against the rules.")
    assert MeasureDetect.seen_args[0]["mode"] == "measure"


def test_ask_with_the_preset_in_chinese(tmp_path, fake_ollama, preset_registry):
    img = tmp_path / "demo.png"
    img.write_bytes(demo_image_bytes())
    fake_ollama.responder = lambda path, body: "## 结论\n需修改"
    r = CliRunner().invoke(
        cli,
        ["ask", str(img), "--preset", PRESET, "-q", "这是天猫主图", "--ollama-host", fake_ollama.url, "--no-stream"],
    )
    assert r.exit_code == 0, r.output
    msgs = fake_ollama.calls("/api/chat")[0]["messages"]
    assert "电商主图审核员" in msgs[0]["content"] and "这是天猫主图" in msgs[-1]["content"]


def test_batch_runs_a_preset_over_a_folder(tmp_path, fake_ollama, preset_registry):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "demo.png").write_bytes(demo_image_bytes())
    fake_ollama.responder = lambda path, body: REPORT_EN
    out = tmp_path / "reports.jsonl"
    r = CliRunner().invoke(
        cli,
        [
            "batch",
            str(tmp_path / "imgs"),
            "--preset",
            PRESET,
            "--out",
            str(out),
            "--ollama-host",
            fake_ollama.url,
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    line = json.loads(out.read_text("utf-8"))
    assert line["answer"] == REPORT_EN and set(line["experts"]) == {"ocr", "detect"}


def test_real_experts_feed_the_preset(tmp_path, fake_ollama, monkeypatch):
    """The real OpenCV detect expert (and OCR when its engine is installed) on the demo image."""
    try:
        from experts.detect import DetectExpert
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"detect expert not importable: {exc}")
    reg = registry(DetectExpert)
    monkeypatch.setattr(cli_module, "configured_registry", lambda settings: reg)
    monkeypatch.setattr(registry_module, "default_registry", lambda: reg)
    img = tmp_path / "demo.png"
    img.write_bytes(demo_image_bytes())
    fake_ollama.responder = lambda path, body: REPORT_EN
    r = CliRunner().invoke(cli, ["ask", str(img), "--preset", PRESET, "--ollama-host", fake_ollama.url, "--no-stream"])
    assert r.exit_code == 0, r.output
    user = fake_ollama.calls("/api/chat")[0]["messages"][-1]["content"]
    assert "detect(mode=measure)" in user and "960x640" in user
    assert "Not checked (expert not installed): ocr" in user

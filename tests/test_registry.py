"""Experts register through the `vision_router.experts` entry-point group, built-ins included."""

from __future__ import annotations

import sys
import textwrap

import pytest

from experts.base import Expert, ExpertArgs
from experts.errors import ExpertError
from experts.registry import Registry, default_registry


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A third-party distribution on sys.path advertising experts through entry points."""
    (tmp_path / "acme_vision.py").write_text(
        textwrap.dedent("""
        from experts.base import Expert, ExpertArgs

        class Args(ExpertArgs):
            query: str | None = None

        class Colour(Expert):
            name = "colour"
            aliases = ("color",)
            description = "dominant colour"
            Args = Args
            positional = "query"
            def _analyze(self, image, args):
                r, g, b = image.rgb()[0, 0]
                return self.new_result(image, attributes={"colour": [int(r), int(g), int(b)]})

        class Blur(Expert):
            name = "blur"
            description = "blurriness"
            def _analyze(self, image, args):
                return self.new_result(image, measurements={"blur": 0.0})

        def register(register):
            register(Blur)
    """),
        "utf-8",
    )
    dist = tmp_path / "acme_vision-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vision\nVersion: 1.0\n", "utf-8")
    (dist / "entry_points.txt").write_text(
        "[vision_router.experts]\ncolour = acme_vision:Colour\nblur = acme_vision:register\n"
        "broken = acme_vision:does_not_exist\n",
        "utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("acme_vision", None)


def test_third_party_experts_load_by_class_and_by_register_hook(plugin_dist):
    reg = Registry()
    reg.load_entry_points()
    assert {"colour", "blur"} <= set(reg.names())
    assert reg.resolve("COLOR") == "colour"
    assert "broken" in reg.load_errors and "does_not_exist" in reg.load_errors["broken"]


def test_environment_restricts_which_plugins_load(plugin_dist, monkeypatch):
    monkeypatch.setenv("VISION_ROUTER_EXPERTS", "blur")
    reg = Registry()
    reg.load_entry_points()
    assert reg.names() == ["blur"]


def test_builtins_register_through_the_same_entry_points():
    assert {"ocr", "detect"} <= set(default_registry().names())


def test_instances_are_shared_and_configurable():
    class A(ExpertArgs):
        pass

    class Cfg(Expert):
        name = "cfg"
        Args = A

    reg = Registry()
    reg.register(Cfg)
    assert reg.get("cfg") is reg.get("cfg")
    reg.configure("cfg", engine="onnx")
    assert reg.get("cfg").config == {"engine": "onnx"}
    with pytest.raises(ExpertError, match="unknown expert 'nope' \\(available: cfg\\)"):
        reg.get("nope")
    with pytest.raises(TypeError):
        reg.register(object)  # type: ignore[arg-type]


def test_args_schema_is_a_clean_tool_schema():
    class SArgs(ExpertArgs):
        query: str | None = None
        top_k: int = 5

    class S(Expert):
        name = "s"
        Args = SArgs

    schema = S.args_schema()
    assert schema == {
        "type": "object",
        "properties": {"query": {"type": "string", "default": None}, "top_k": {"type": "integer", "default": 5}},
    }


def test_configuring_the_same_settings_again_keeps_the_loaded_expert():
    """Every Orchestrator applies the config file to the shared registry: that must not reload models."""

    class W(Expert):
        name = "w"
        Args = ExpertArgs

    reg = Registry()
    reg.register(W)
    reg.configure("w", model="big")
    first = reg.get("w")
    reg.configure("w", model="big")
    assert reg.get("w") is first
    reg.configure("w", model="other")
    assert reg.get("w") is not first and reg.get("w").config == {"model": "other"}


class _Ready(Expert):
    name = "ready"
    description = "always there"


class _NoWeights(Expert):
    name = "noweights"
    description = "weights missing"

    def status(self):
        return {"ok": False, "engine": "x", "weights": "not downloaded; fetch once: get-weights"}


class _Silent(Expert):
    name = "silent"
    description = "not ok, no reason given"

    def status(self):
        return {"ok": False}


class _Crashes(Expert):
    name = "crashes"
    description = "status raises"

    def status(self):
        raise RuntimeError("driver exploded")


@pytest.fixture
def mixed_registry(monkeypatch):
    """A registry with one runnable expert and three that cannot run, used by the CLI commands."""
    from router.commands import common

    reg = Registry()
    for cls in (_Ready, _NoWeights, _Silent, _Crashes):
        reg.register(cls)
    monkeypatch.setattr(common, "configured_registry", lambda settings: reg)
    return reg


def test_runnable_is_the_experts_whose_status_is_ok(mixed_registry):
    assert mixed_registry.runnable() == ["ready"]
    assert mixed_registry.runnable(["noweights", "ready", "nope"]) == ["ready"]
    assert mixed_registry.status("crashes") == {"ok": False, "error": "RuntimeError: driver exploded"}


def test_expert_list_gives_a_reason_for_every_na(mixed_registry):
    import json

    from click.testing import CliRunner

    from router.commands import cli

    r = CliRunner().invoke(cli, ["expert", "list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    na = [i for i, line in enumerate(lines) if "[N/A]" in line]
    assert len(na) == 3
    reasons = {lines[i].split()[0]: lines[i + 2].strip() for i in na}
    assert reasons == {
        "noweights": "why N/A: weights: not downloaded; fetch once: get-weights",
        "silent": "why N/A: not available (the expert's status gives no reason)",
        "crashes": "why N/A: RuntimeError: driver exploded",
    }
    rows = json.loads(CliRunner().invoke(cli, ["expert", "list", "--json"]).output)["experts"]
    assert {r["name"]: r["status"].get("reason") for r in rows}["noweights"].startswith("weights: not downloaded")


def test_tools_lists_only_experts_that_can_run(mixed_registry):
    import json

    from click.testing import CliRunner

    from router.commands import cli

    r = CliRunner().invoke(cli, ["tools"])
    assert r.exit_code == 0, r.output
    assert [t["function"]["name"] for t in json.loads(r.output)] == ["vision_ready"]
    r = CliRunner().invoke(cli, ["tools", "--expert", "noweights"])
    assert r.exit_code == 1
    assert r.output.strip() == "Error: noweights cannot run here: weights: not downloaded; fetch once: get-weights"

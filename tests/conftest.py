"""Shared fixtures: every test gets its own config and cache folders, never the user's."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.fake_ollama import FakeOllama


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("VISION_ROUTER_CACHE", str(home / "cache" / "vision-router"))
    monkeypatch.delenv("VISION_ROUTER_CONFIG", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def fake_ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture(scope="session")
def _real_ollama_server():
    from tests.real_ollama import RealOllama, missing

    absent = missing()
    if absent:
        pytest.skip("the real-model tier needs " + ", ".join(absent))
    with RealOllama() as server:
        yield server


@pytest.fixture
def real_ollama(_real_ollama_server):
    """An Ollama-compatible server with a real model (SmolLM2-135M-Instruct, greedy), loaded once per
    session; its recorded requests and scripts are cleared for each test. Model: ``.model_name``."""
    _real_ollama_server.reset()
    yield _real_ollama_server
    _real_ollama_server.reset()


def png_bytes(width: int = 64, height: int = 48, color=(255, 255, 255), fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt, **save)
    return buf.getvalue()

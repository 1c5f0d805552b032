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


def png_bytes(width: int = 64, height: int = 48, color=(255, 255, 255), fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt, **save)
    return buf.getvalue()

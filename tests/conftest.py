"""Shared fixtures: every test gets its own config and cache folders, never the user's."""

from __future__ import annotations

import io
import socket

import pytest
from PIL import Image

from experts.access import is_loopback_address
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


@pytest.fixture
def no_network(monkeypatch):
    """Every connection beyond this machine fails at once (and names resolve only for loopback), with
    HF_HUB_OFFLINE unset: anything that reaches for the hub would fail loudly, not wait."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    tried: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and self.family in (socket.AF_INET, socket.AF_INET6):
            if not is_loopback_address(host):
                tried.append(str(host))
                raise OSError(f"test: no network ({host})")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost") and not is_loopback_address(str(host)):
            tried.append(str(host))
            raise socket.gaierror(f"test: no network ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return tried


def png_bytes(width: int = 64, height: int = 48, color=(255, 255, 255), fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt, **save)
    return buf.getvalue()

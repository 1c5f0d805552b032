"""compose.yaml as users run it: `up -d` brings Open WebUI -> router -> Ollama up (stand-ins for the registry-only
images, tagged with the real names), the one-shot creates the routed model from the Modelfile, a chat with an
image through Open WebUI gets an answer built from the experts, nothing is published beyond loopback, and `down`
leaves the volumes. The GPU, Jetson and experts variants resolve to what they say."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid

import httpx
import pytest
import yaml

from tests_containers.conftest import ROOT, free_port, run, wait_http

DEMO = (ROOT / "router" / "data" / "demo.png").read_bytes()
TOKEN = "compose-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def compose(project: str, *args: str, env: dict[str, str], files=("compose.yaml",), check=True) -> str:
    flags = [a for f in files for a in ("-f", str(ROOT / f))]
    return run("podman-compose", "-p", project, *flags, *args, env=env, check=check, timeout=1800)


def container_state(name: str) -> dict:
    out = subprocess.run(["podman", "inspect", name], capture_output=True, text=True)
    return json.loads(out.stdout)[0]["State"] if out.returncode == 0 else {}


def wait_exited(name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = container_state(name)
        if state.get("Status") == "exited":
            return state
        time.sleep(1)
    raise AssertionError(f"{name} did not finish within {timeout:.0f} s: {container_state(name)}")


def logs(name: str) -> str:
    proc = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
    return (proc.stdout + proc.stderr)[-3000:]


@pytest.fixture
def stack(router_image, fake_ollama_image, open_webui_image, monkeypatch):
    project = f"vrt{uuid.uuid4().hex[:8]}"
    env = {
        # Knobs compose.yaml offers users: the images' tags (here: the image under test and the stand-ins) and the
        # host ports (free ones, so a running stack on this machine is left alone).
        "VISION_ROUTER_VERSION": "test",
        "OLLAMA_VERSION": "standin-fake",
        "OPEN_WEBUI_VERSION": "standin",
        "VISION_ROUTER_PORT": str(free_port()),
        "OPEN_WEBUI_PORT": str(free_port()),
        # A token from the environment: the router requires it, Open WebUI is given it as its connection key.
        "VISION_ROUTER_TOKEN": TOKEN,
    }
    for key in ("WEBUI_SECRET_KEY", "VISION_ROUTER_BIND", "OPEN_WEBUI_BIND", "COMPOSE_PROFILES"):
        monkeypatch.delenv(key, raising=False)  # the defaults, whatever this shell has
    try:
        yield project, env
    finally:
        compose(project, "down", env=env, check=False)
        for volume in ("ollama", "router-cache", "open-webui"):
            subprocess.run(["podman", "volume", "rm", "-f", f"{project}_{volume}"], capture_output=True)


def test_up_chat_with_an_image_through_open_webui_and_down_keeps_the_volumes(stack):
    project, env = stack
    started = time.monotonic()
    compose(project, "up", "-d", env=env)
    router = f"http://127.0.0.1:{env['VISION_ROUTER_PORT']}"
    webui = f"http://127.0.0.1:{env['OPEN_WEBUI_PORT']}"

    setup = wait_exited(f"{project}_ollama-setup_1", 180)
    assert setup["ExitCode"] == 0, logs(f"{project}_ollama-setup_1")
    health = wait_http(f"{router}/_vision/health", 60, what="the router", headers=AUTH).json()
    assert health["upstream"]["ok"] and "ocr" in health["experts"], health
    # Without the experts profile the router says so and offers the others.
    assert "unreachable" in health["unavailable"].get("caption", ""), health
    wait_http(f"{webui}/health", 600, what="Open WebUI")
    up_s = time.monotonic() - started

    # Published on the host's loopback only; Ollama not at all.
    published = run("podman", "port", f"{project}_router_1").split()
    assert published == ["11435/tcp", "->", f"127.0.0.1:{env['VISION_ROUTER_PORT']}"]
    assert run("podman", "port", f"{project}_open-webui_1").split()[-1] == f"127.0.0.1:{env['OPEN_WEBUI_PORT']}"
    assert run("podman", "port", f"{project}_ollama_1").strip() == ""

    # The first account is the admin, as in the browser; then the model list and a chat with an attached image.
    signup = httpx.post(
        f"{webui}/api/v1/auths/signup",
        json={"name": "Admin", "email": "admin@example.org", "password": "a-long-test-password"},
        timeout=60,
    )
    assert signup.status_code == 200, signup.text
    auth = {"Authorization": f"Bearer {signup.json()['token']}"}
    models = httpx.get(f"{webui}/api/models", headers=auth, timeout=60).json()
    assert "qwen3-vision:latest" in [m["id"] for m in models["data"]], models
    image_url = "data:image/png;base64," + base64.b64encode(DEMO).decode("ascii")
    chat = httpx.post(
        f"{webui}/api/chat/completions",
        headers=auth,
        json={
            "model": "qwen3-vision:latest",
            "stream": False,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is written on this package?"},
                        {"type": "image_url", "image_url": {"url": image_url}},
                    ],
                }
            ],
        },
        timeout=300,
    )
    assert chat.status_code == 200, chat.text
    answer = chat.json()["choices"][0]["message"]["content"]
    assert "AURORA" in answer and "GREEN TEA" in answer, answer  # the stand-in answers from the OCR'd text
    assert httpx.get(f"{router}/api/tags", timeout=10).status_code == 401  # the token is required
    metrics = httpx.get(f"{router}/_vision/metrics", headers=AUTH, timeout=10).json()
    assert metrics["experts"]["ocr"]["runs"] >= 1, metrics["experts"]

    compose(project, "down", env=env)
    assert not container_state(f"{project}_router_1")
    volumes = set(run("podman", "volume", "ls", "--format", "{{.Name}}").split())
    assert {f"{project}_ollama", f"{project}_router-cache", f"{project}_open-webui"} <= volumes
    mount = json.loads(run("podman", "volume", "inspect", f"{project}_ollama"))[0]["Mountpoint"]
    assert "qwen3-vision" in open(os.path.join(mount, "standin-models.json"), encoding="utf-8").read()
    print(f"\ncompose up -> Open WebUI healthy: {up_s:.1f} s")


@pytest.mark.parametrize(
    "files, profile, check",
    [
        (("compose.yaml", "compose.gpu.yaml"), None, "gpu"),
        (("compose.yaml",), "experts", "experts"),
        (("compose.yaml", "compose.jetson.yaml"), None, "jetson"),
    ],
)
def test_the_variants_resolve(files, profile, check):
    env = {"COMPOSE_PROFILES": profile or ""}
    services = yaml.safe_load(compose("vrtconfig", "config", env=env, files=files))["services"]
    if check == "gpu":
        devices = services["ollama"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    elif check == "experts":
        assert services["caption"]["command"][:3] == ["expert", "serve", "caption"]
        assert services["clip"]["command"][:3] == ["expert", "serve", "clip"]
        assert "ports" not in services["caption"]  # reached by the router on the stack's network only
    else:
        assert services["ollama"]["image"].startswith("dustynv/ollama:r36")
        assert services["router"]["platform"] == "linux/arm64"

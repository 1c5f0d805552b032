"""The router image as users run it: built from the repository's Dockerfile, small, non-root, no compilers; the
container answers a request with an image through the fake Ollama and through a real tiny model; the same image
serves an expert that the router reaches by URL."""

from __future__ import annotations

import time

import httpx
import ollama
import pytest

from tests_containers.conftest import ROOT, free_port, run, wait_http

DEMO = (ROOT / "router" / "data" / "demo.png").read_bytes()  # a product shot: "AURORA", "GREEN TEA", "$12.99"
SERVE = ["serve", "--host", "0.0.0.0", "--allow-remote", "--upstream", "http://ollama:11434"]
TOKEN = "s3cret-for-the-test"


def test_the_image_is_small_runs_as_a_user_and_has_no_compilers(router_image):
    assert router_image["size"] <= 1_000_000_000, f"{router_image['size'] / 1e6:.0f} MB"
    assert router_image["user"] == "vision"
    assert "/_vision/health" in " ".join(router_image["healthcheck"] or [])
    assert router_image["env"]["VISION_ROUTER_EXTRAS"] == "onnx,people,serve"
    out = run(
        "podman", "run", "--rm", "--entrypoint", "sh", router_image["tag"], "-c",
        "id -u; for c in gcc cc c++ g++ clang make ld as; do command -v $c; done;"
        " ls -A /root/.cache ~/.cache /opt/vision-router/.cache 2>/dev/null;"
        " python -c 'import pip' 2>/dev/null && echo pip; true",
    ).split()  # fmt: skip
    assert out[0] != "0", "runs as root"
    assert out[1:] == [], f"compilers, caches or pip in the image: {out[1:]}"


def start_router(pod, *args: str, config: str = "", env: dict[str, str] | None = None, tmp_path=None) -> str:
    port = free_port()
    opts = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
    opts += ["-v", f"{pod.volume('router-cache')}:/data/cache"]
    if config:
        path = tmp_path / "config.toml"
        path.write_text(config, "utf-8")
        opts += ["-v", f"{path}:/etc/vision-router/config.toml:ro"]
    pod.start("router", "localhost/ollama-vision-router:test", *args, ports={port: 11435}, opts=opts)
    return f"http://127.0.0.1:{port}"


def create_routed_model(pod, ollama_image: str) -> None:
    """What compose.yaml's ollama-setup does: create qwen3-vision from the Modelfile in the Ollama next door."""
    modelfile = ["-v", f"{ROOT / 'Modelfile'}:/etc/vision-router/Modelfile:ro", "-e", "OLLAMA_HOST=http://ollama:11434"]
    for _ in range(120):  # the server may still be starting
        try:
            pod.oneshot(ollama_image, "create", "qwen3-vision", "-f", "/etc/vision-router/Modelfile", opts=modelfile)
            return
        except AssertionError:
            time.sleep(0.5)
    raise AssertionError("could not create qwen3-vision in the stand-in Ollama")


def upstream_ok(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.json().get("upstream", {}).get("ok") is True


def test_the_container_answers_an_image_through_the_fake_ollama(router_image, fake_ollama_image, pod, tmp_path):
    pod.start("ollama", fake_ollama_image)
    # A mounted config file and the token from the environment, as compose.yaml passes them.
    url = start_router(
        pod, *SERVE, config="[serve]\nfindings = true\n", env={"VISION_ROUTER_TOKEN": TOKEN}, tmp_path=tmp_path
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wait_http(f"{url}/_vision/health", 60, what="the router")  # a liveness answer needs no token
    create_routed_model(pod, fake_ollama_image)
    health = httpx.get(f"{url}/_vision/health", headers=auth, timeout=10).json()
    assert health["upstream"]["ok"] and {"ocr", "detect"} <= set(health["experts"]), health

    refused = httpx.post(f"{url}/api/chat", json={"model": "qwen3-vision", "messages": []}, timeout=10)
    assert refused.status_code == 401 and "error" in refused.json()

    client = ollama.Client(host=url, headers=auth)
    reply = client.chat(
        model="qwen3-vision",
        messages=[{"role": "user", "content": "What is written on this package?", "images": [DEMO]}],
    )
    answer = reply.message.content
    assert "AURORA" in answer and "GREEN TEA" in answer, answer  # the fake answers from the OCR'd text it was given
    assert "looked at:" in answer  # [serve] findings = true: the mounted config file was read
    # The result cache lives on the volume, written by the non-root user.
    assert pod.volume_files(f"{pod.prefix}-router-cache")
    # A missing extra's hint says how to rebuild the image, not to pip install into the container.
    logs = pod.logs("router")
    assert "rebuild the image with --build-arg EXTRAS=onnx,people,serve,caption" in logs, logs
    assert "pip install" not in logs


def test_the_container_answers_through_a_real_tiny_model(router_image, real_ollama_image, pod):
    pod.start("ollama", real_ollama_image)
    url = start_router(pod, *SERVE)
    wait_http(f"{url}/_vision/health", 600, ok=upstream_ok, what="SmolLM2 behind the router")
    client = ollama.Client(host=url, timeout=600)
    chunks = list(
        client.chat(
            model="smollm2:135m",
            messages=[{"role": "user", "content": "What does the text on the package say?", "images": [DEMO]}],
            stream=True,
            options={"num_predict": 32},
        )
    )
    assert [c.done for c in chunks].count(True) == 1 and chunks[-1].done
    assert "".join(c.message.content or "" for c in chunks).strip()
    metrics = httpx.get(f"{url}/_vision/metrics", timeout=10).json()
    assert metrics["experts"].get("ocr", {}).get("runs", 0) >= 1, metrics["experts"]
    assert metrics["llm_turns"] >= 1


def test_the_same_image_serves_an_expert_the_router_reaches_by_url(router_image, fake_ollama_image, pod, tmp_path):
    pod.start("ollama", fake_ollama_image)
    pod.start("ocr-service", router_image["tag"], "expert", "serve", "ocr", "--host", "0.0.0.0", "--allow-remote")
    create_routed_model(pod, fake_ollama_image)
    url = start_router(pod, *SERVE, config='[experts.ocr]\nurl = "http://ocr-service:8790"\n', tmp_path=tmp_path)

    def ocr_offered(r: httpx.Response) -> bool:
        return r.status_code == 200 and "ocr" in r.json()["experts"]

    wait_http(f"{url}/_vision/health?refresh=1", 60, ok=ocr_offered, what="the remote ocr expert")
    reply = ollama.Client(host=url).chat(
        model="qwen3-vision", messages=[{"role": "user", "content": "read the text", "images": [DEMO]}]
    )
    assert "AURORA" in reply.message.content, reply.message.content
    run("podman", "stop", "-t", "2", f"{pod.prefix}-ocr-service")
    gone = httpx.get(f"{url}/_vision/health?refresh=1", timeout=30).json()
    assert "unreachable" in gone["unavailable"].get("ocr", ""), gone  # it was the service that read the text


@pytest.mark.parametrize("extra", ["clip"])
def test_an_extra_the_image_lacks_is_a_rebuild_hint(router_image, extra):
    out = run("podman", "run", "--rm", router_image["tag"], "expert", "list", check=False)
    assert f"--build-arg EXTRAS=onnx,people,serve,{extra}" in out, out

"""`/bin/ollama` of the stand-in for the registry-only `ollama/ollama` image (test infrastructure only).

The commands compose.yaml uses, as the real CLI does them over the HTTP API at ``OLLAMA_HOST``:

- ``ollama serve``: the project's fake Ollama (tests/fake_ollama.py), or with ``OLLAMA_STANDIN=real`` the real tiny
  model (tests/real_ollama.py, SmolLM2-135M-Instruct), on ``OLLAMA_HOST`` (the image sets ``0.0.0.0:11434`` as the
  official one does). Models pulled or created are kept in ``/root/.ollama`` (the models volume), so they are still
  there after ``down`` and ``up``.
- ``ollama list`` (the healthcheck), ``ollama pull NAME``, ``ollama create NAME -f Modelfile`` (FROM, PARAMETER and
  SYSTEM read here and sent as ``/api/create`` fields, as the real CLI does).

The fake's answer is built from what the router put in the model's context: the OCR'd text quoted in the
``[IMAGE CONTEXT]`` block (``- text (N lines, ...): "A" / "B"``), so a test can tell an answer built from the
experts from any other.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

STORE = Path(os.environ.get("OLLAMA_MODELS_STORE", "/root/.ollama/standin-models.json"))
TEXT_LINE = re.compile(r"^- text \(\d+ lines?[^)]*\): (.*)$", re.M)
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def base_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    if "://" not in host:
        host = "http://" + host
    return host.replace("://0.0.0.0", "://127.0.0.1").rstrip("/")


def answer_from_context(path: str, body: dict[str, Any]) -> str:
    """What a model would say with the experts' findings in its context: the text they read."""
    texts = [str(m.get("content") or "") for m in body.get("messages") or []] + [str(body.get("prompt") or "")]
    for text in texts:
        m = TEXT_LINE.search(text)
        if m:
            words = [json.loads(f'"{q}"') for q in QUOTED.findall(m.group(1))]
            return "The image reads: " + " ".join(words) + "."
    return "I was given no text from the image."


def serve() -> None:
    sys.path.insert(0, "/opt/standin")
    from router.serve.local_server import LocalServer
    from tests.fake_ollama import FakeModel, FakeOllama

    if os.environ.get("OLLAMA_STANDIN") == "real":
        from tests.real_ollama import RealOllama

        server: FakeOllama = RealOllama(default_num_predict=48)
    else:
        server = FakeOllama()
        server.models.clear()  # nothing until pulled or created, as on a fresh volume
        server.responder = lambda path, body: answer_from_context(path, body)
    for name, system in _stored().items():
        server.add_model(FakeModel(name, system=system))
    _keep_models(server, FakeModel)
    host, _, port = os.environ.get("OLLAMA_HOST", "0.0.0.0:11434").split("://")[-1].rpartition(":")
    local = LocalServer(server.app(), host=host or "0.0.0.0", port=int(port or 11434), timeout_keep_alive=120)
    local.start()
    print(f"stand-in Ollama ({type(server).__name__}) listening on {local.url}", flush=True)
    while True:
        time.sleep(3600)


def _stored() -> dict[str, str]:
    try:
        return json.loads(STORE.read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def _keep_models(server: Any, model_cls: Any) -> None:
    """Write every model added (pull, create) to the volume."""
    add = server.add_model

    def add_and_store(model: Any) -> None:
        add(model)
        stored = _stored()
        stored[model.name] = model.system
        STORE.parent.mkdir(parents=True, exist_ok=True)
        STORE.write_text(json.dumps(stored), "utf-8")

    server.add_model = add_and_store


def parse_modelfile(text: str) -> dict[str, Any]:
    """FROM, PARAMETER and SYSTEM of a Modelfile as /api/create fields."""
    out: dict[str, Any] = {"parameters": {}}
    system = re.search(r'^SYSTEM\s+"""(.*?)"""', text, re.S | re.M)
    if system:
        out["system"] = system.group(1)
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            out["from"] = rest.strip()
        elif word.upper() == "PARAMETER":
            key, _, value = rest.strip().partition(" ")
            out["parameters"][key] = value.strip()
    return out


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "serve"
    if cmd == "serve":
        serve()
        return 0
    with httpx.Client(base_url=base_url(), timeout=60) as client:
        try:
            if cmd == "list":
                r = client.get("/api/tags")
                r.raise_for_status()
                print("NAME")
                for m in r.json().get("models", []):
                    print(m["name"])
            elif cmd == "pull":
                r = client.post("/api/pull", json={"model": argv[1], "stream": False})
                r.raise_for_status()
                print("success")
            elif cmd == "create":
                body = {"model": argv[1], **parse_modelfile(Path(argv[argv.index("-f") + 1]).read_text("utf-8"))}
                r = client.post("/api/create", json=body)
                r.raise_for_status()
                print("success")
            else:
                print(f"stand-in ollama: unknown command {cmd!r}", file=sys.stderr)
                return 2
        except (httpx.HTTPError, IndexError, ValueError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

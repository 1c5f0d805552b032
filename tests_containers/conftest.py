"""The container tier: build the project's image from the repository, run it, bring compose.yaml up.

It needs podman, buildah and podman-compose, which pip cannot install, so it is not part of the main test
command (testpaths = tests) but has its own README command; where they are missing every test here skips with
one line naming them. Registry-only images (ollama/ollama, ghcr.io/open-webui/open-webui) are built from
tests_containers/standins/ and tagged with the real names, so the compose file under test is the one users run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).resolve().parent / "standins"
TOOLS = ("podman", "buildah", "podman-compose")
MISSING = [t for t in TOOLS if shutil.which(t) is None]

ROUTER_IMAGE = "localhost/ollama-vision-router:test"  # compose.yaml's router image with VISION_ROUTER_VERSION=test
FAKE_OLLAMA = "docker.io/ollama/ollama:standin-fake"
REAL_OLLAMA = "docker.io/ollama/ollama:standin-real"
OPEN_WEBUI = "ghcr.io/open-webui/open-webui:standin"
# Chroot isolation and the host's network for RUN steps work on any Podman host, and on sandboxes that have no
# nested namespaces; the docker format keeps the Dockerfile's HEALTHCHECK (OCI images have no such field).
BUILD_OPTS = ["--format", "docker", "--layers", "--isolation", "chroot", "--network", "host"]


SKIP_REASON = (
    f"the container tier needs {', '.join(MISSING)} (not installable with pip: Debian `apt-get install podman "
    "buildah`, then `pip install podman-compose`)"
)


def run(*args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    """A command's stdout; on failure its stderr becomes the test's message."""
    proc = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def build(tag: str, context: Path, containerfile: Path | None = None, **build_args: str) -> float:
    """Build an image; returns the seconds it took."""
    args = ["podman", "build", *BUILD_OPTS, "-t", tag]
    if containerfile is not None:
        args += ["-f", str(containerfile)]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    start = time.monotonic()
    run(*args, str(context), timeout=3600)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float, ok=lambda r: r.status_code == 200, what: str = "", headers: dict | None = None
) -> httpx.Response:
    """Poll ``url`` until ``ok(response)``; the last answer or error is in the failure message."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5, headers=headers)
            if ok(r):
                return r
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise AssertionError(f"{what or url} not ready after {timeout:.0f} s ({last})")


def cpu_torch_wheels() -> list[Path]:
    """A CPU build of torch 2.13.0 for this Python from pip's find-links folders, when the machine keeps one."""
    dirs = [d for d in os.environ.get("PIP_FIND_LINKS", "").split() if d]
    try:
        conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
        for line in conf.stdout.splitlines():
            if "find-links" in line:
                dirs += line.split("=", 1)[1].strip().strip("'\"").split()
    except OSError:
        pass
    found = []
    for d in dict.fromkeys(dirs):
        found += [Path(p) for p in glob.glob(os.path.join(d.removeprefix("file://"), "torch-2.13.0+cpu-cp311-*.whl"))]
    return found[:1]


def context_dir(tmp: Path, containerfile: str, *, project: bool = False, wheels: bool = False) -> Path:
    """A build context for a stand-in: its Containerfile, the `ollama` command, the fake and real Ollama."""
    ctx = tmp / containerfile.split(".")[0]
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy(STANDINS / containerfile, ctx / "Containerfile")
    shutil.copy(STANDINS / "ollama_cli.py", ctx / "ollama_cli.py")
    (ctx / "tests").mkdir(exist_ok=True)
    for name in ("__init__.py", "fake_ollama.py", "real_ollama.py"):
        shutil.copy(ROOT / "tests" / name, ctx / "tests" / name)
    (ctx / "wheels").mkdir(exist_ok=True)
    if wheels:
        for wheel in cpu_torch_wheels():
            shutil.copy(wheel, ctx / "wheels" / wheel.name)
    if project:
        dst = ctx / "project"
        dst.mkdir(exist_ok=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, dst / name)
        for tree in ("router", "experts"):
            shutil.copytree(ROOT / tree, dst / tree, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return ctx


# --- images, built once per session ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def router_image() -> dict:
    """The project's Dockerfile, built from the repository as a user builds it."""
    seconds = build(ROUTER_IMAGE, ROOT)
    return {"tag": ROUTER_IMAGE, "build_s": seconds, **inspect_image(ROUTER_IMAGE)}


@pytest.fixture(scope="session")
def fake_ollama_image(router_image, tmp_path_factory) -> str:
    ctx = context_dir(tmp_path_factory.mktemp("standin"), "ollama.Containerfile")
    build(FAKE_OLLAMA, ctx, ROUTER_IMAGE=ROUTER_IMAGE)
    return FAKE_OLLAMA


@pytest.fixture(scope="session")
def real_ollama_image(tmp_path_factory) -> str:
    ctx = context_dir(tmp_path_factory.mktemp("standin"), "ollama-real.Containerfile", project=True, wheels=True)
    build(REAL_OLLAMA, ctx)
    return REAL_OLLAMA


@pytest.fixture(scope="session")
def open_webui_image(tmp_path_factory) -> str:
    ctx = tmp_path_factory.mktemp("owui")
    shutil.copy(STANDINS / "open-webui.Containerfile", ctx / "Containerfile")
    (ctx / "wheels").mkdir()
    for wheel in cpu_torch_wheels():
        shutil.copy(wheel, ctx / "wheels" / wheel.name)
    build(OPEN_WEBUI, ctx)
    return OPEN_WEBUI


def inspect_image(tag: str) -> dict:
    data = json.loads(run("podman", "image", "inspect", tag))[0]
    config = data.get("Config") or {}
    return {
        "size": int(data["Size"]),
        "user": config.get("User", ""),
        "healthcheck": (data.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test"),
        "env": dict(e.split("=", 1) for e in config.get("Env") or []),
    }


# --- containers and networks this session made, removed by name at the end --------------------------------------
class Pod:
    """Containers on one podman network of their own; everything is removed on :meth:`close`."""

    def __init__(self) -> None:
        self.prefix = f"vrt-{uuid.uuid4().hex[:8]}"
        self.network = f"{self.prefix}-net"
        self.containers: list[str] = []
        self.volumes: list[str] = []
        run("podman", "network", "create", self.network)

    def volume(self, name: str) -> str:
        """A named volume of this pod (removed with it)."""
        vname = f"{self.prefix}-{name}"
        run("podman", "volume", "create", vname)
        self.volumes.append(vname)
        return vname

    def volume_files(self, vname: str) -> list[str]:
        """The files in a volume, read on the host (``podman exec`` is not available on every host)."""
        mount = Path(json.loads(run("podman", "volume", "inspect", vname))[0]["Mountpoint"])
        return sorted(str(p.relative_to(mount)) for p in mount.rglob("*") if p.is_file())

    def oneshot(self, image: str, *args: str, opts=()) -> str:
        """Run a command in a fresh container on the pod's network (compose's one-shot services do the same)."""
        return run("podman", "run", "--rm", "--network", self.network, *opts, image, *args)

    def start(self, name: str, image: str, *args: str, ports: dict[int, int] | None = None, opts=()) -> str:
        cname = f"{self.prefix}-{name}"
        publish = [a for host, inner in (ports or {}).items() for a in ("-p", f"127.0.0.1:{host}:{inner}")]
        run(
            "podman", "run", "-d", "--name", cname, "--network", self.network, "--network-alias", name,
            *publish, *opts, image, *args,
        )  # fmt: skip
        self.containers.append(cname)
        return cname

    def logs(self, name: str) -> str:
        proc = subprocess.run(["podman", "logs", f"{self.prefix}-{name}"], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def close(self) -> None:
        for cname in reversed(self.containers):
            subprocess.run(["podman", "rm", "-f", "-v", "-t", "2", cname], capture_output=True)
        for vname in self.volumes:
            subprocess.run(["podman", "volume", "rm", "-f", vname], capture_output=True)
        subprocess.run(["podman", "network", "rm", "-f", self.network], capture_output=True)


@pytest.fixture
def pod() -> Iterator[Pod]:
    p = Pod()
    yield p
    p.close()


def pytest_collection_modifyitems(config, items):
    here = [item for item in items if item.path.is_relative_to(Path(__file__).parent)]
    if MISSING and here:
        # One line for the whole tier: the first test says why it skips, the others are deselected.
        here[0].add_marker(pytest.mark.skip(reason=SKIP_REASON))
        config.hook.pytest_deselected(items=here[1:])
        items[:] = [item for item in items if item not in here[1:]]
        return
    # Image builds (fixtures) count toward the first test that needs them: pyproject's 300 s is for unit tests.
    for item in here:
        item.add_marker(pytest.mark.timeout(3600))

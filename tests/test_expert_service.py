"""Expert services: real subprocesses on loopback, called through RemoteExpert and the registry."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from experts.errors import EngineMissing, ExpertError
from experts.images import decode_image
from experts.registry import Registry
from experts.remote import RemoteExpert
from tests.service_experts import EchoExpert

pytest.importorskip("starlette", reason="needs the [serve] extra")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")

ROOT = Path(__file__).resolve().parents[1]


def _png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def service(name: str, *args: str, tmp_path: Path, entry_points: str = "none", wait_s: float = 90):
    """Start ``python -m router.commands.expert_serve NAME`` on a free loopback port, wait for /healthz, and
    always kill it afterwards."""
    port = free_port()
    log = tmp_path / f"service-{name}-{port}.log"
    env = {**os.environ, "VISION_ROUTER_EXPERTS": entry_points, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "router.commands.expert_serve", name, "--port", str(port), *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service did not become healthy:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield Service(proc, url, log)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    with service(
        "echo", "--import", "tests.service_experts", "--max-concurrency", "4", tmp_path=tmp_path_factory.mktemp("svc")
    ) as svc:
        yield svc


def test_routes(echo):
    assert httpx.get(f"{echo.url}/healthz").json() == {"status": "ok", "expert": "echo"}
    info = httpx.get(f"{echo.url}/v1/info").json()
    assert info["name"] == "echo" and info["aliases"] == ["repeat"] and info["positional"] == "query"
    assert info["engine"] == "echo" and info["device"] == "cpu" and info["model"] == "none"
    assert set(info["args_schema"]["properties"]) == {"query", "delay", "fail"}
    body = {"image": base64.b64encode(_png()).decode(), "args": {"query": "hi"}}
    r = httpx.post(f"{echo.url}/v1/analyze", json=body)
    assert r.status_code == 200 and r.json()["caption"] == "echo: hi" and r.json()["expert"] == "echo"
    assert "loading expert echo" in echo.stderr() and "serving echo on http://127.0.0.1:" in echo.stderr()


@pytest.mark.parametrize(
    "kwargs, status, fragment",
    [
        ({"json": {"image": "not base64!", "args": {}}}, 400, "illegal base64"),
        ({"json": {"image": base64.b64encode(b"GIF89a-no").decode()}}, 400, "image"),
        ({"json": {"args": {}}}, 400, "base64 string"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not JSON"),
        ({"json": {"image": base64.b64encode(_png()).decode(), "args": [1]}}, 400, "JSON object"),
        ({"json": {"image": base64.b64encode(_png()).decode(), "args": {"colour": 1}}}, 400, "'colour'"),
        ({"json": {"image": base64.b64encode(_png()).decode(), "args": {"fail": "error"}}}, 500, "asked to fail"),
        ({"json": {"image": base64.b64encode(_png()).decode(), "args": {"fail": "bug"}}}, 500, "RuntimeError: boom"),
    ],
)
def test_errors_are_json_lines(echo, kwargs, status, fragment):
    r = httpx.post(f"{echo.url}/v1/analyze", **kwargs)
    assert r.status_code == status
    body = r.json()
    assert fragment in body["error"] and "\n" not in body["error"] and "detail" not in body


def test_multipart_upload(echo):
    r = httpx.post(
        f"{echo.url}/v1/analyze",
        files={"image": ("a.png", _png(), "image/png")},
        data={"args": json.dumps({"query": "up"})},
    )
    try:
        import multipart  # noqa: F401
    except ImportError:
        assert r.status_code == 400 and "python-multipart" in r.json()["error"]
    else:
        assert r.status_code == 200 and r.json()["caption"] == "echo: up"


def test_remote_expert_learns_from_info(echo):
    remote = RemoteExpert("echo", echo.url)
    assert remote.positional == "query" and remote.aliases == ("repeat",)
    assert set(remote.args_schema()["properties"]) == {"query", "delay", "fail"}
    img = decode_image(_png())
    res = remote.analyze(img, {"query": "hello"})
    assert res.caption == "echo: hello" and res.image_id == img.image_id and res.expert == "echo"
    assert res.attributes == {"width": 64, "height": 48, "format": "PNG"}
    assert res.args == {"query": "hello"} and res.timing_ms > 0
    assert remote.status()["ok"] and remote.info()["url"] == echo.url
    remote.close()


def test_remote_errors_read_like_local_ones(echo):
    local, img = EchoExpert(), decode_image(_png())
    for remote in (RemoteExpert("echo", echo.url), RemoteExpert("echo", echo.url, local_class=EchoExpert)):
        for args in ({"colour": "red"}, {"fail": "error"}, {"fail": "engine"}):
            with pytest.raises(ExpertError) as local_exc:
                local.analyze(img, args)
            with pytest.raises(ExpertError) as remote_exc:
                remote.analyze(img, args)
            assert str(remote_exc.value) == str(local_exc.value)
            assert type(remote_exc.value) is type(local_exc.value)
        with pytest.raises(ExpertError, match="^RuntimeError: boom$"):
            remote.analyze(img, {"fail": "bug"})
        remote.close()
    with pytest.raises(EngineMissing):
        RemoteExpert("echo", echo.url).analyze(img, {"fail": "engine"})


def test_registry_url_config_and_remote_only(echo):
    reg = Registry()
    reg.register(EchoExpert)
    reg.configure("echo", url=echo.url, timeout=10)
    inst = reg.get("repeat")
    assert isinstance(inst, RemoteExpert) and inst.local_class is EchoExpert and inst.timeout == 10
    assert inst.analyze(decode_image(_png()), {"query": "via registry"}).caption == "echo: via registry"

    # Remote-only: the class is not installed here; name, aliases and schema come from the service.
    reg2 = Registry()
    cls = reg2.add_remote("echo", echo.url)
    assert reg2.resolve("repeat") == "echo" and cls.positional == "query"
    assert set(reg2.expert_class("echo").args_schema()["properties"]) == {"query", "delay", "fail"}
    remote = reg2.get("echo")
    assert remote.analyze(decode_image(_png()), {"query": "x"}).caption == "echo: x"

    # add_remote on an installed expert keeps its class and validation.
    reg3 = Registry()
    reg3.register(EchoExpert)
    assert reg3.add_remote("echo", echo.url) is EchoExpert
    with pytest.raises(ExpertError, match="bad argument 'nope'"):
        reg3.get("echo").parse_args({"nope": 1})


def test_read_timeout_is_bounded(echo):
    remote = RemoteExpert("echo", echo.url, timeout=1)
    t0 = time.monotonic()
    with pytest.raises(ExpertError, match=r"did not answer within 1 s"):
        remote.analyze(decode_image(_png()), {"delay": 5})
    assert time.monotonic() - t0 < 4


def test_unreachable_service_retries_then_fails_fast():
    url = f"http://127.0.0.1:{free_port()}"
    remote = RemoteExpert("echo", url, local_class=EchoExpert, retries=2)
    t0 = time.monotonic()
    with pytest.raises(ExpertError, match=rf"^echo: expert service at {url} is unreachable"):
        remote.analyze(decode_image(_png()), {"query": "x"})
    assert 0.7 <= time.monotonic() - t0 < 5  # two backoffs (0.25 s + 0.5 s), then the error
    assert remote.status()["ok"] is False
    # Remote-only with the service down: registration works, the call fails with one line.
    reg = Registry()
    reg.add_remote("ghost", url, aliases=("spook",))
    with pytest.raises(ExpertError, match="unreachable"):
        reg.get("spook").analyze(decode_image(_png()), {})


def _events(log: Path) -> list[tuple[str, float]]:
    lines = log.read_text("utf-8").split() if log.exists() else []
    return [(lines[i], float(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]


def _wait_for(log: Path, event: str, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = [t for e, t in _events(log) if e == event]
        if found:
            return found[0]
        time.sleep(0.02)
    pytest.fail(f"no {event!r} in the expert's log within {within_s} s: {_events(log)}")


def test_a_remote_expert_the_router_gives_up_on_stops_its_work(tmp_path):
    """The router's per-expert timeout is the end of that run everywhere: the router closes the connection,
    the service sees its client leave and the expert stops at its next step, within 3 s of the router
    giving up (it would otherwise work on for its whole minute); the service serves the next request."""
    from router.core.config import Settings
    from router.core.dispatch import ExpertCall
    from router.core.orchestrator import Orchestrator

    log = tmp_path / "steps.log"
    with service("steps", "--import", "tests.service_experts", "-c", f"log={log}", tmp_path=tmp_path) as svc:
        registry = Registry()
        registry.add_remote("steps", svc.url)
        orch = Orchestrator(Settings(cache_dir="", experts={"steps": {"timeout": 1.5}}), registry=registry)
        image = decode_image(_png())
        (result,) = orch.dispatcher.run_sync([ExpertCall(image, 1, "steps", {"seconds": 60}, source="cli")])
        gave_up = time.time()
        assert result.error == "timed out after 1.5 s while running", result
        stopped = _wait_for(log, "stopped", within_s=10)
        assert stopped - gave_up < 3.0, f"stopped {stopped - gave_up:.2f} s after the router gave up"
        assert [e for e, _ in _events(log)] == ["start", "stopped"]  # never "finished"
        # The service is free for the next request at once.
        (ok,) = orch.dispatcher.run_sync([ExpertCall(image, 1, "steps", {"seconds": 0.1}, source="cli")])
        assert ok.error is None and ok.caption == "worked 0.1 s"


def test_killed_service_mid_request_is_an_error_not_a_hang(tmp_path):
    with service("echo", "--import", "tests.service_experts", tmp_path=tmp_path) as svc:
        remote = RemoteExpert("echo", svc.url, local_class=EchoExpert, timeout=60)
        outcome: dict = {}

        def call():
            t0 = time.monotonic()
            try:
                remote.analyze(decode_image(_png()), {"delay": 30})
            except Exception as exc:
                outcome["error"] = exc
            outcome["elapsed"] = time.monotonic() - t0

        worker = threading.Thread(target=call)
        worker.start()
        time.sleep(1.0)
        svc.proc.send_signal(signal.SIGKILL)
        worker.join(timeout=15)
        assert not worker.is_alive(), "the call hung after the service died"
    assert isinstance(outcome["error"], ExpertError)
    assert "closed the connection mid-request" in str(outcome["error"])
    assert outcome["elapsed"] < 10
    with pytest.raises(ExpertError, match="unreachable"):
        remote.analyze(decode_image(_png()), {})


def test_service_refuses_to_start_with_one_line(tmp_path):
    env = {**os.environ, "VISION_ROUTER_EXPERTS": "none"}
    r = subprocess.run(
        [sys.executable, "-m", "router.commands.expert_serve", "nosuch", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "Error: unknown expert 'nosuch'" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_command_options():
    from click.testing import CliRunner

    from router.commands.expert_serve import parse_config as _parse_config
    from router.commands.expert_serve import serve_command

    out = CliRunner().invoke(serve_command, ["--help"])
    assert out.exit_code == 0 and "--host" in out.output and "--port" in out.output
    assert "127.0.0.1" in out.output
    assert _parse_config(["a=1", "b=true", "c=/x/y", "d=ViT-B-32", "e=[1, 2]"]) == {
        "a": 1,
        "b": True,
        "c": "/x/y",
        "d": "ViT-B-32",
        "e": [1, 2],
    }


# --- the real experts behind a service, with tiny models -----------------------------------------
def test_tiny_clip_service(tmp_path):
    pytest.importorskip("open_clip", reason="needs the [clip] extra")
    torch = pytest.importorskip("torch", reason="needs the [clip] extra")
    import open_clip

    from experts.clip import ClipExpert
    from tests.test_clip import TINY, TINY_CONFIG

    cfg = tmp_path / f"{TINY}.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(cfg))
    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(TINY, pretrained=None).state_dict(), ckpt)
    opts = [
        "-c",
        f"model={TINY}",
        "-c",
        f"model_config={cfg}",
        "-c",
        f"pretrained={ckpt}",
        "-c",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    with service("clip", *opts, tmp_path=tmp_path, entry_points="clip") as svc:
        info = httpx.get(f"{svc.url}/v1/info").json()
        assert info["engine"] == "open_clip" and info["model"] == TINY and info["device"] == "cpu"
        remote = RemoteExpert("clip", svc.url, local_class=ClipExpert)
        res = remote.analyze(decode_image(_png()), {"query": "monet, cyberpunk"})
        assert {s.name for s in res.styles} == {"Impressionism (Monet)", "Cyberpunk"}
        res = remote.analyze(decode_image(_png()), {"top_k": 3})
        assert len(res.styles) == 3 and all(s.name_zh for s in res.styles)
        assert "loaded clip in" in svc.stderr()


def test_tiny_caption_service(tmp_path):
    pytest.importorskip("transformers", reason="needs the [caption] extra")
    from experts.caption import CaptionExpert
    from tests.test_caption import NO_SPECIALS, build_tiny_blip2

    build_tiny_blip2(tmp_path / "blip2")
    opts = [
        "-c",
        f"model={tmp_path / 'blip2'}",
        "-c",
        "max_new_tokens=4",
        "-c",
        f"generate_kwargs={json.dumps(NO_SPECIALS)}",
    ]
    with service("caption", *opts, tmp_path=tmp_path, entry_points="caption") as svc:
        remote = RemoteExpert("caption", svc.url, local_class=CaptionExpert)
        res = remote.analyze(decode_image(_png()), {"query": "what is the colour of the car ?"})
        assert res.attributes["question"] == "what is the colour of the car ?"
        assert res.caption and len(res.caption.split()) <= 4
        assert httpx.get(f"{svc.url}/v1/info").json()["engine"] == "transformers BLIP-2"


# --- hardening: body cap, bounded arguments, tokens, bind address, missing extra -----------------
def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """An echo service with a token and a 1 MiB body limit."""
    with service(
        "echo",
        "--import",
        "tests.service_experts",
        "--token",
        "s3cret",
        "--max-body-mib",
        "1",
        tmp_path=tmp_path_factory.mktemp("guarded"),
    ) as svc:
        yield svc


AUTH = {"Authorization": "Bearer s3cret"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the service's RSS from /proc (Linux)")
def test_body_over_the_limit_is_413_without_being_read(guarded):
    before = _rss_kib(guarded.proc.pid)
    # Declares 300 MB: refused from the header, before any of it is read.
    with socket.create_connection(("127.0.0.1", int(guarded.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
            b"Content-Type: application/json\r\nContent-Length: 314572800\r\n\r\n" + b"{" * 65536
        )
        got = b""
        while b"}" not in got.partition(b"\r\n\r\n")[2]:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    head, _, payload = got.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(payload)["error"] == "request body is over the 1 MiB limit (--max-body-mib)"

    # No Content-Length (chunked): counted while it streams, cut just past the limit.
    def chunks():
        for _ in range(300):  # 300 x 64 KiB = 19 MiB offered
            yield b"x" * 65536

    try:
        r = httpx.post(f"{guarded.url}/v1/analyze", content=chunks(), headers=AUTH, timeout=30)
    except httpx.HTTPError:  # the server may close while the client is still sending: also fine
        pass
    else:
        assert r.status_code == 413 and "over the 1 MiB limit" in r.json()["error"]
    assert _rss_kib(guarded.proc.pid) - before < 30_000
    # A body within the limit still works.
    ok = httpx.post(
        f"{guarded.url}/v1/analyze",
        headers=AUTH,
        json={"image": base64.b64encode(_png()).decode(), "args": {"query": "small"}},
    )
    assert ok.status_code == 200 and ok.json()["caption"] == "echo: small"


def test_huge_argument_is_a_short_400_that_does_not_echo_it(echo):
    body = {"image": base64.b64encode(_png()).decode(), "args": {"query": "Q" * 5_000_000}}
    r = httpx.post(f"{echo.url}/v1/analyze", json=body, timeout=30)
    assert r.status_code == 400 and len(r.content) < 300 and "QQQQ" not in r.text
    assert "over the 16 KiB limit" in r.json()["error"]
    # Within the JSON limit, each string is still capped (and a huge unknown key is not named back).
    r = httpx.post(f"{echo.url}/v1/analyze", json={**body, "args": {"query": "Q" * 3000}})
    assert r.status_code == 400 and r.json()["error"].startswith(
        "echo: bad argument 'query': String should have at most 2000 characters"
    )
    r = httpx.post(f"{echo.url}/v1/analyze", json={**body, "args": {"K" * 5000: 1}})
    assert r.status_code == 400 and len(r.text) < 300


def test_arguments_are_bounded_in_process_too():
    with pytest.raises(ExpertError, match=r"^echo: bad argument 'query': String should have at most 2000 char"):
        EchoExpert().parse_args({"query": "x" * 2001})
    assert "maxLength" not in json.dumps(EchoExpert.args_schema())  # the blanket cap stays out of tool schemas


def test_token_guards_analyze_and_info_but_not_liveness(guarded):
    body = {"image": base64.b64encode(_png()).decode(), "args": {"query": "t"}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        r = httpx.post(f"{guarded.url}/v1/analyze", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"].startswith("unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{guarded.url}/v1/info", headers=headers).status_code == 401
        assert httpx.get(f"{guarded.url}/healthz", headers=headers).json() == {"status": "ok"}
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = httpx.post(f"{guarded.url}/v1/analyze", json=body, headers={"Authorization": f"{scheme} s3cret"})
        assert r.status_code == 200 and r.json()["caption"] == "echo: t"
    assert httpx.get(f"{guarded.url}/healthz", headers=AUTH).json() == {"status": "ok", "expert": "echo"}
    assert httpx.get(f"{guarded.url}/v1/info", headers=AUTH).json()["name"] == "echo"
    assert "token required" in guarded.stderr()


def test_remote_expert_sends_its_token(guarded):
    img = decode_image(_png())
    assert RemoteExpert("echo", guarded.url, token="s3cret").analyze(img, {"query": "r"}).caption == "echo: r"
    with pytest.raises(ExpertError, match=r"refused the request: it needs a token \(set token= for this expert\)$"):
        RemoteExpert("echo", guarded.url, local_class=EchoExpert).analyze(img, {})
    with pytest.raises(ExpertError, match="refused the request: wrong token$"):
        RemoteExpert("echo", guarded.url, local_class=EchoExpert, token="nope").analyze(img, {})
    reg = Registry()
    reg.register(EchoExpert)
    reg.configure("echo", url=guarded.url, token="s3cret")
    assert reg.get("echo").analyze(img, {"query": "reg"}).caption == "echo: reg"


def _start(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VISION_ROUTER_EXPERTS": "none"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "router.commands.expert_serve",
            "echo",
            "--import",
            "tests.service_experts",
            "--port",
            str(free_port()),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::"])
def test_non_loopback_host_needs_allow_remote(host):
    r = _start("--host", host)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "listens beyond this machine" in r.stderr and "--allow-remote" in r.stderr
    assert "loading expert" not in r.stderr  # refused before any model loads
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_serve_extra_is_one_line():
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from router.commands.expert_serve import serve_command; serve_command(['echo'])"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    from experts.install import install_hint

    assert r.stderr.strip() == (
        f"Error: expert serve needs starlette and uvicorn (the [serve] extra): {install_hint('serve')}"
    )

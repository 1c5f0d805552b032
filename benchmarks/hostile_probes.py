"""Issue 19's hostile-input probes, each in a fresh process, with a checkout's code (``--root``, default this
one) so a before/after runs in one session:

- ``endless``: endless or huge inputs to the command line (``- < /dev/zero``, a 1.5 GB pipe, ``--config``
  and ``keywords_file`` on /dev/zero, a FIFO config, TOML nested 5000 deep), each under a 3 GB address-space
  cap and a 60 s limit: exit status, seconds, peak RSS, and the stderr line count and last line.
- ``timeout``: ``detect`` on a 7000x7000 photo with a 1 s expert timeout: how long the run goes on after
  the timed-out reply, and the peak RSS.
- ``mcp``: ``vision-router mcp --http`` sent eight 80 MB ``data:`` URLs that are not images: server RSS
  after each rejection.
- ``proxy``: three 7000x7000 photos at once through the proxy (real ocr and detect as the fallback, the
  tests' fake Ollama upstream), with 60 s and with 5 s expert timeouts: peak RSS, and RSS 5 s after.

    .venv/bin/python benchmarks/hostile_probes.py endless|timeout|mcp|proxy [--root DIR]

The 7000x7000 photo is the one ``benchmarks/big_image_memory.py`` makes (scikit-image's coffee, upscaled).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = "from router.commands import main; main()"


def _env(root: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=root, VISION_ROUTER_CACHE="")


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def run_cli(root: str, label: str, args: list[str], stdin: str | None = None) -> None:
    """One command with ``stdin`` from a file, ``pipe:N`` (N zero bytes through a pipe) or nothing."""
    feeder = None
    if stdin and stdin.startswith("pipe:"):
        feeder = subprocess.Popen(["head", "-c", stdin[5:], "/dev/zero"], stdout=subprocess.PIPE)
        fin = feeder.stdout
    else:
        fin = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *args],
            stdin=fin,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(root),
            cwd=root,
            preexec_fn=_cap_memory,
        )
        killed = False
        deadline = time.monotonic() + 60
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                killed = True
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        if feeder is not None:
            feeder.kill()
            feeder.wait()
        err.seek(0)
        lines = err.read().decode("utf-8", "replace").strip().splitlines()
    rc = os.waitstatus_to_exitcode(status)
    last = lines[-1][:100] if lines else ""
    print(
        f"{label:<32} exit {rc}{' (killed at 60 s)' if killed else ''}  {time.perf_counter() - t0:5.1f} s  "
        f"peak {usage.ru_maxrss / 1024:5.0f} MB  stderr {len(lines)} lines: {last}",
        flush=True,
    )


def endless(root: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="vr-probe-"))
    fifo = folder / "fifo.toml"
    os.mkfifo(fifo)
    deep = folder / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    kw = folder / "kw.toml"
    kw.write_text('keywords_file = "/dev/zero"\n')
    run_cli(root, "expert run detect - < /dev/zero", ["expert", "run", "detect", "-"], "/dev/zero")
    run_cli(root, "expert run detect - < 1.5 GB pipe", ["expert", "run", "detect", "-"], "pipe:1500000000")
    run_cli(root, "--config /dev/zero", ["--config", "/dev/zero", "expert", "list"])
    run_cli(root, "keywords_file = /dev/zero", ["--config", str(kw), "expert", "list"])
    run_cli(root, "--config FIFO", ["--config", str(fifo), "expert", "list"])
    run_cli(root, "--config nested 5000 deep", ["--config", str(deep), "expert", "list"])


_TIMEOUT_CODE = """
import sys, time, resource
from experts.images import load_image_file
from experts.registry import Registry
from experts.detect import DetectExpert
from router.core.dispatch import Dispatcher, ExpertCall
ended = {}
class Timed(DetectExpert):
    def analyze(self, image, args=None):
        try:
            return super().analyze(image, args)
        except BaseException as e:
            ended["how"] = type(e).__name__
            raise
        finally:
            ended["t"] = time.perf_counter()
reg = Registry(); reg.register(Timed)
disp = Dispatcher(reg, timeout_s=1.0)
img = load_image_file(sys.argv[1])
reg.get("detect").load()
t0 = time.perf_counter()
[res] = disp.run_sync([ExpertCall(image=img, image_index=1, expert="detect", args={})])
t_reply = time.perf_counter()
while "t" not in ended and time.perf_counter() - t_reply < 180:
    time.sleep(0.05)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"reply after {t_reply - t0:.1f} s ({res.error}); the run went on {ended.get('t', float('nan')) - t_reply:.1f} s "
      f"after the reply, ended by {ended.get('how', 'finishing')}; peak RSS {rss:.0f} MB")
"""


def timeout(root: str) -> None:
    from benchmarks.big_image_memory import make_photos

    folder = Path(tempfile.gettempdir()) / "vision-router-bigimage"
    folder.mkdir(parents=True, exist_ok=True)
    _, big = make_photos(folder, 7000)
    subprocess.run([sys.executable, "-c", _TIMEOUT_CODE, str(big)], env=_env(root), cwd=root, check=False)


_PROXY_CODE = """
import base64, resource, sys, threading, time
import httpx
from experts.registry import default_registry
from router.core.config import Settings
from router.serve.proxy import ProxyServer, create_app
from tests.fake_ollama import FakeOllama
from tests.test_proxy_support import MODEL, models
def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) // 1024
fake = FakeOllama(models()).start()
fake.script(*(["ok"] * 20))
settings = Settings(cache_dir="", fallback=["ocr", "detect"], expert_timeout=float(sys.argv[2]))
proxy = ProxyServer(create_app(settings, default_registry(), fake.url)).start()
b64 = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
out = []
def one():
    msg = {"role": "user", "content": "hi", "images": [b64]}
    r = httpx.post(proxy.url + "/api/chat", json={"model": MODEL, "stream": False, "messages": [msg]}, timeout=600)
    out.append(r.status_code)
t0 = time.perf_counter()
threads = [threading.Thread(target=one) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
t1 = time.perf_counter()
time.sleep(5)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"expert timeout {sys.argv[2]} s: 3 answers {out} in {t1 - t0:.1f} s; peak RSS {peak:.0f} MB; "
      f"RSS 5 s after the answers {rss()} MB", flush=True)
proxy.stop()
fake.stop()
"""


def proxy(root: str) -> None:
    from benchmarks.big_image_memory import make_photos

    folder = Path(tempfile.gettempdir()) / "vision-router-bigimage"
    folder.mkdir(parents=True, exist_ok=True)
    _, big = make_photos(folder, 7000)
    for timeout_s in ("60", "5"):
        cmd = [sys.executable, "-W", "ignore", "-c", _PROXY_CODE, str(big), timeout_s]
        subprocess.run(cmd, env=_env(root), cwd=root, check=False)


def _rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) // 1024


def mcp(root: str, requests: int = 8, mb: int = 80) -> None:
    import httpx

    env = {**_env(root), "VISION_ROUTER_EXPERTS": "detect"}
    cmd = [sys.executable, "-c", CLI, "mcp", "--http", "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("the MCP server did not start")
            if "streamable HTTP on " in line:
                url = line.split("streamable HTTP on ", 1)[1].split()[0]
        host, port = url.removeprefix("http://").removesuffix("/mcp").split(":")
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        accept = {"Accept": "application/json, text/event-stream"}
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "p", "version": "0"},
            },
        }
        with httpx.Client(timeout=120) as client:
            r = client.post(url, json=init, headers=accept)
            headers = {**accept, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
            client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            time.sleep(1)
            rows = [f"idle {_rss_mb(proc.pid)}"]
            junk = base64.b64encode(os.urandom(mb * 3 // 4 * 1024 * 1024)).decode()
            params = {"name": "detect", "arguments": {"image": "data:image/png;base64," + junk}}
            body = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}).encode()
            del junk, params
            for i in range(requests):
                client.post(url, content=body, headers={**headers, "content-type": "application/json"})
                time.sleep(0.5)
                rows.append(f"{i + 1}: {_rss_mb(proc.pid)}")
        print(f"server RSS (MB) after each rejected {mb} MB data: URL: " + ", ".join(rows))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", choices=["endless", "timeout", "mcp", "proxy"])
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose code runs (default: this one)")
    args = ap.parse_args()
    {"endless": endless, "timeout": timeout, "mcp": mcp, "proxy": proxy}[args.probe](args.root)


if __name__ == "__main__":
    main()

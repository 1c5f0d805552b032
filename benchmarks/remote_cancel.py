"""How soon does a remote expert stop once the router gives up on it?

`vision-router expert serve steps` (a test expert that works in 10 ms steps and checks between them whether
it was given up on, as real experts do between the steps of their pipelines) runs in its own process; the
router here calls it through the registry's `url` setting with a per-expert timeout, as `ask` and `serve`
do. For each run: the time from the router giving up (its dispatcher returns the timeout line) to the
expert's own record that it stopped. Acceptance: under 3 s. Before the router closed its connection, the
expert worked on to the end of its run (here 60 s) whatever the router did.

    python benchmarks/remote_cancel.py [--runs 10] [--timeout 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACCEPTANCE_S = 3.0


def start_service(log: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """`expert serve steps` on a free port; its URL from the line it prints."""
    cmd = [sys.executable, "-m", "router.commands.expert_serve", "steps", "--port", "0"]
    cmd += ["--import", "tests.service_experts", "-c", f"log={log}"]
    env = {**os.environ, "VISION_ROUTER_EXPERTS": "none", "PYTHONUNBUFFERED": "1"}
    with open(out, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (m := re.search(r"serving steps on (http://\S+)", out.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"expert serve did not start:\n{out.read_text()}")
        time.sleep(0.05)
    return proc, m.group(1)


def stopped_after(log: Path, start: int, within_s: float = 30.0) -> float | None:
    """The unix time of the first `stopped` record past line ``start`` (None: it did not stop in time)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        lines = log.read_text("utf-8").splitlines()[start:] if log.exists() else []
        for line in lines:
            event, _, when = line.partition(" ")
            if event == "stopped":
                return float(when)
        time.sleep(0.01)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=1.0, help="the router's per-expert timeout, seconds")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()

    from experts.images import decode_image
    from experts.registry import Registry
    from router.core.config import Settings
    from router.core.dispatch import ExpertCall
    from router.core.orchestrator import Orchestrator
    from tests.conftest import png_bytes

    with tempfile.TemporaryDirectory() as tmp:
        log, out = Path(tmp) / "steps.log", Path(tmp) / "serve.out"
        proc, url = start_service(log, out)
        try:
            registry = Registry()
            registry.add_remote("steps", url)
            settings = Settings(cache_dir="", experts={"steps": {"timeout": opts.timeout}})
            orch = Orchestrator(settings, registry=registry)
            lags: list[float | None] = []
            for i in range(opts.runs):
                image = decode_image(png_bytes(64, 48, (i, 0, 0)))  # a new image each run: no cache hit
                seen = len(log.read_text("utf-8").splitlines()) if log.exists() else 0
                (result,) = orch.dispatcher.run_sync([ExpertCall(image, 1, "steps", {"seconds": 60}, source="cli")])
                gave_up = time.time()
                assert result.error and "timed out" in result.error, result
                stopped = stopped_after(log, seen)
                lags.append(None if stopped is None else stopped - gave_up)
        finally:
            proc.kill()
            proc.wait(timeout=10)

    done = [x for x in lags if x is not None]
    report = {
        "runs": opts.runs,
        "router_timeout_s": opts.timeout,
        "stopped": len(done),
        "lag_median_s": round(statistics.median(done), 4) if done else None,
        "lag_max_s": round(max(done), 4) if done else None,
        "acceptance_s": ACCEPTANCE_S,
        "pass": len(done) == opts.runs and max(done) < ACCEPTANCE_S,
    }
    if opts.json:
        print(json.dumps(report))
        return
    print(f"remote expert given up on after {opts.timeout:g} s, {opts.runs} runs on `expert serve`:")
    print(f"  stopped: {len(done)}/{opts.runs}")
    if done:
        print(f"  router gave up -> expert stopped: median {report['lag_median_s']} s, max {report['lag_max_s']} s")
    print(f"  acceptance (< {ACCEPTANCE_S:g} s every run): {'pass' if report['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()

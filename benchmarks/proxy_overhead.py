"""What does `vision-router serve` cost a request that carries no image?

Pass-through chat via the proxy vs directly to the same fake Ollama, side by side in one run. The
fake and the proxy each run in their own process (as Ollama and the proxy would), the client here;
requests alternate direct / proxy so drift hits both alike.

- time to first chunk: median added by the proxy (target <= 3 ms)
- streamed chunks/s through the proxy vs direct: unpaced (as fast as the fake can write) and paced
  at 1 ms per chunk (a fast GPU); target ratio >= 0.9

    python benchmarks/proxy_overhead.py [--requests 200] [--chunks 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "qwen3-vision"


# --- the two servers, each in its own process ------------------------------------------------------
def _fake_main(q, chunks: int) -> None:
    from tests.fake_ollama import FakeOllama, Reply

    fake = FakeOllama().start()

    def responder(path, body):
        kind = body["messages"][-1]["content"]
        if kind == "ttfc":
            return Reply("Hello there, how can I help?", chunk_size=4)
        if kind == "paced":
            return Reply("x" * (chunks // 4), chunk_size=1, chunk_delay_s=0.001)
        return Reply("x" * chunks, chunk_size=1)

    fake.responder = responder
    q.put(fake.url)
    while True:
        time.sleep(3600)


def _proxy_main(q, upstream: str) -> None:
    from experts.registry import Registry
    from router.core.config import Settings
    from router.serve.proxy import ProxyServer, create_app

    app = create_app(Settings(cache_dir=""), Registry(), upstream)
    server = ProxyServer(app).start()
    q.put(server.url)
    while True:
        time.sleep(3600)


def _start(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args), daemon=True)
    p.start()
    return p, q.get(timeout=60)


# --- measurements ------------------------------------------------------------------------------------
def stream(client, url: str, kind: str) -> tuple[float, float, int]:
    """(seconds to the first NDJSON line, seconds for the whole stream, lines)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": kind}]}
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    with client.stream("POST", url + "/api/chat", json=body) as r:
        for line in r.iter_lines():
            if not line:
                continue
            if n == 0:
                first = time.perf_counter() - t0
            n += 1
    return first, time.perf_counter() - t0, n


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): a contention-proof cost measure."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run(requests: int, chunks: int) -> dict:
    import httpx

    fake_p, fake_url = _start(_fake_main, chunks)
    proxy_p, proxy_url = _start(_proxy_main, fake_url)
    try:
        direct = httpx.Client(timeout=60)
        proxied = httpx.Client(timeout=60)
        for _ in range(20):  # warm both paths (connections, show cache, JIT-free but lazy imports)
            stream(direct, fake_url, "ttfc")
            stream(proxied, proxy_url, "ttfc")
        ttfc_d, ttfc_p, paired = [], [], []
        cpu0 = cpu_s(proxy_p.pid)
        for i in range(requests):
            order = [(direct, fake_url, ttfc_d), (proxied, proxy_url, ttfc_p)]
            if i % 2:
                order.reverse()
            got = {}
            for client, url, sink in order:
                first, _, _ = stream(client, url, "ttfc")
                sink.append(first)
                got[id(sink)] = first
            paired.append(got[id(ttfc_p)] - got[id(ttfc_d)])
        proxy_cpu_ms = (cpu_s(proxy_p.pid) - cpu0) * 1000 / requests
        rates = {}
        for kind, reps in (("unpaced", 5), ("paced", 3)):
            d_rates, p_rates = [], []
            for i in range(reps):
                order = [(direct, fake_url, d_rates), (proxied, proxy_url, p_rates)]
                if i % 2:
                    order.reverse()
                for client, url, sink in order:
                    _, total, n = stream(client, url, kind)
                    sink.append(n / total)
            rates[kind] = {
                "direct_chunks_s": statistics.median(d_rates),
                "proxy_chunks_s": statistics.median(p_rates),
                "ratio": statistics.median(p_rates) / statistics.median(d_rates),
            }
        return {
            "requests": requests,
            "ttfc_ms": {
                "direct_median": statistics.median(ttfc_d) * 1000,
                "proxy_median": statistics.median(ttfc_p) * 1000,
                "added_median": (statistics.median(ttfc_p) - statistics.median(ttfc_d)) * 1000,
                "added_paired_median": statistics.median(paired) * 1000,
                "added_paired_p90": sorted(paired)[int(len(paired) * 0.9)] * 1000,
                "proxy_cpu_per_request": proxy_cpu_ms,
            },
            "load_average": os.getloadavg()[0],
            "cpus": os.cpu_count(),
            "throughput": rates,
            "chunks_per_stream": {"unpaced": chunks, "paced": chunks // 4},
        }
    finally:
        for p in (proxy_p, fake_p):
            p.terminate()
            p.join(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="time-to-first-chunk samples per path")
    ap.add_argument("--chunks", type=int, default=2000, help="chunks in an unpaced throughput stream")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    res = run(args.requests, args.chunks)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    t = res["ttfc_ms"]
    print(
        f"pass-through chat, no images, {res['requests']} requests per path (fake Ollama and proxy in "
        "their own processes, loopback)"
    )
    print(
        f"  time to first chunk: direct {t['direct_median']:.2f} ms, proxy {t['proxy_median']:.2f} ms median; "
        f"added {t['added_median']:.2f} ms (paired median {t['added_paired_median']:.2f} ms, "
        f"p90 {t['added_paired_p90']:.2f} ms)  target <= 3 ms: "
        f"{'PASS' if t['added_paired_median'] <= 3 else 'FAIL'}"
    )
    print(
        f"  proxy CPU per pass-through request: {t['proxy_cpu_per_request']:.2f} ms "
        f"(machine: {res['cpus']} CPUs, load average {res['load_average']:.1f})"
    )
    for kind, r in res["throughput"].items():
        print(
            f"  {kind:<8} chunks/s: direct {r['direct_chunks_s']:.0f}, proxy {r['proxy_chunks_s']:.0f}, "
            f"ratio {r['ratio']:.2f}  target >= 0.9: {'PASS' if r['ratio'] >= 0.9 else 'FAIL'}"
        )


if __name__ == "__main__":
    main()

"""Load: 200 concurrent streamed requests through the proxy on loopback (150 plain chats forwarded,
50 with an image through the experts): no errors, every stream complete with one terminal chunk,
memory bounded. Bounded in count and time; prints its figures."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.fake_ollama import Reply
from tests.test_proxy_support import MODEL, b64, no_image_bytes, png, start_stack, stop_stack

CONCURRENT = 200
ROUTED = 50
# Two different sentences: a routed answer that repeats a sentence is cut as a loop (router/core/answer_text.py).
ANSWER = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs."


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def one(client: httpx.AsyncClient, url: str, i: int, images: list[str]) -> tuple[int, str, float, int]:
    msg = {"role": "user", "content": f"What is written here? ({i})"}
    if i < ROUTED:
        msg["images"] = [images[i % len(images)]]
    t0 = time.perf_counter()
    first = 0.0
    lines: list[dict] = []
    async with client.stream("POST", url + "/api/chat", json={"model": MODEL, "messages": [msg]}) as r:
        async for line in r.aiter_lines():
            if line:
                if not lines:
                    first = time.perf_counter() - t0
                lines.append(json.loads(line))
    text = "".join(x.get("message", {}).get("content", "") for x in lines)
    done = [x for x in lines if x.get("done")]
    errors = [x for x in lines if "error" in x]
    assert r.status_code == 200 and not errors and len(done) == 1 and lines[-1]["done"], (i, lines[-2:])
    return r.status_code, text, first, len(lines)


async def burst(url: str, images: list[str]) -> list[tuple[int, str, float, int]]:
    # Several clients: one httpx pool of 200 connections costs the load generator more than the proxy.
    clients = [httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) for _ in range(8)]
    try:
        return await asyncio.gather(*(one(clients[i % 8], url, i, images) for i in range(CONCURRENT)))
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.timeout(120)
def test_200_concurrent_streams(capsys):
    s = start_stack()
    try:
        s.fake.responder = lambda path, body: Reply(ANSWER, chunk_size=6)
        images = [b64(png((i * 20 % 255, 80, 160))) for i in range(10)]
        rss0 = rss_mib()
        figures = []
        for round_no in range(2):  # the second burst shows whether memory keeps growing
            t0 = time.perf_counter()
            results = asyncio.run(burst(s.url, images))
            wall = time.perf_counter() - t0
            assert len(results) == CONCURRENT
            assert all(text == ANSWER for _, text, _, _ in results)
            firsts = sorted(f for _, _, f, _ in results)
            chunks = sum(n for *_, n in results)
            figures.append(
                (round_no + 1, wall, chunks, firsts[len(firsts) // 2], firsts[int(len(firsts) * 0.95)], rss_mib())
            )
        metrics = httpx.get(s.url + "/_vision/metrics").json()
        assert metrics["inflight"] == 1 and metrics["stream_errors"] == 0 and metrics["upstream_errors"] == 0
        assert metrics["requests"]["chat_routed"] == 2 * ROUTED
        assert metrics["requests"]["chat_passthrough"] == 2 * (CONCURRENT - ROUTED)
        for img in images:
            no_image_bytes(s.fake, image_b64=img)
        growth = figures[-1][-1] - figures[0][-1]
        assert figures[-1][-1] - rss0 < 200, "memory grew too much"
        assert growth < 60, f"second burst grew RSS by {growth:.0f} MiB"
        with capsys.disabled():
            print(f"\nload: {CONCURRENT} concurrent streams ({ROUTED} with an image), RSS before {rss0:.0f} MiB")
            for n, wall, chunks, p50, p95, rss in figures:
                print(
                    f"  burst {n}: {wall:.2f} s wall, {chunks} NDJSON lines, first line p50 {p50 * 1000:.0f} ms"
                    f" / p95 {p95 * 1000:.0f} ms, 0 errors, RSS after {rss:.0f} MiB"
                )
            print(f"  cache: {metrics['cache']}")
    finally:
        stop_stack(s)

"""Orchestration overhead per request, side by side with a bare `ollama` client call.

The bare call sends exactly the messages the router would send upstream (protocol system prompt and
[IMAGE CONTEXT] included), so payload size is equal. Both talk to the same zero-latency fake Ollama
(tests/fake_ollama.py), run in its own process like the real server (in-process it would share the
GIL), over a real socket; the experts are no-ops, so the difference is what the router adds:
keyword routing, dispatch (a thread hop per expert), context rendering, tag parsing and event
plumbing. Image intake (size checks, sha256, pixel decode) is measured on its own line.

    python benchmarks/orchestration_overhead.py [--requests 300]

Target (issue 2): <= 2 ms median added per request.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ollama  # noqa: E402
from PIL import Image  # noqa: E402

from experts.base import Expert, ExpertArgs  # noqa: E402
from experts.images import decode_image  # noqa: E402
from experts.registry import Registry  # noqa: E402
from router.core.config import Settings  # noqa: E402
from router.core.orchestrator import Orchestrator  # noqa: E402

ANSWER = "The label says AURORA GREEN TEA, 20 tea bags, 40 g, priced at $12.99."


class NoopArgs(ExpertArgs):
    query: str | None = None


class NoopOcr(Expert):
    name = "ocr"
    Args = NoopArgs
    positional = "query"

    def _analyze(self, image, args):
        return self.new_result(image, full_text="AURORA GREEN TEA")


def image_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (240, 240, 240)).save(buf, "PNG")
    return buf.getvalue()


async def bare(client: ollama.AsyncClient, model: str, messages: list[dict]) -> float:
    t0 = time.perf_counter()
    async for _ in await client.chat(model=model, messages=messages, stream=True):
        pass
    return time.perf_counter() - t0


def routed_messages(question: str, img: bytes) -> list[dict]:
    """What the router sends upstream for this request (protocol system prompt + context), so the
    bare call carries the same payload and only the router's own work differs."""
    from tests.fake_ollama import FakeOllama

    reg = Registry()
    reg.register(NoopOcr)
    with FakeOllama() as fake:
        orch = Orchestrator(Settings(ollama_host=fake.url, cache_dir=""), registry=reg)
        orch.ask(question, [img])
        return fake.calls("/api/chat")[-1]["messages"]


async def routed(orch: Orchestrator, question: str, img: bytes | None, predecoded: bool = False) -> float:
    msg = {"role": "user", "content": question}
    decoded = None
    if img is not None:
        msg["images"] = [img]
        if predecoded:
            decoded = [decode_image(img)]
    t0 = time.perf_counter()
    async for _ in orch.stream([msg], decoded=decoded):
        pass
    return time.perf_counter() - t0


def start_fake() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_ollama", "--reply", ANSWER, "--chunk-size", "8"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"fake Ollama did not start: {line!r}")
    return proc, line.split()[1]


async def main(n: int) -> None:
    img = image_bytes()
    proc, url = start_fake()
    try:
        client = ollama.AsyncClient(host=url)
        reg = Registry()
        reg.register(NoopOcr)
        # cache_items=0: every request really dispatches the expert (no cache shortcut)
        orch = Orchestrator(Settings(ollama_host=url, cache_dir="", cache_items=0), registry=reg)
        q_img = "What is written on the label?"
        same_payload = await asyncio.to_thread(routed_messages, q_img, img)
        for _ in range(20):  # warm up both paths
            await bare(client, "qwen3-vision", same_payload)
            await routed(orch, q_img, img)
        rows = {
            "bare client": [],
            "router, no image": [],
            "router, image decoded + expert": [],
            "router, image + expert, incl. decode": [],
        }
        for _ in range(n):  # interleave so drift hits every path alike
            rows["bare client"].append(await bare(client, "qwen3-vision", same_payload))
            rows["router, no image"].append(await routed(orch, q_img, None))
            rows["router, image decoded + expert"].append(await routed(orch, q_img, img, predecoded=True))
            rows["router, image + expert, incl. decode"].append(await routed(orch, q_img, img))
    finally:
        proc.kill()
        proc.wait()
    base = statistics.median(rows["bare client"])
    print(f"{n} requests each, zero-latency fake Ollama, {len(ANSWER) // 8 + 1} streamed chunks per answer")
    print(f"{'path':<34} {'median ms':>10} {'p90 ms':>8} {'added ms':>9} {'ratio':>6}")
    for name, xs in rows.items():
        med = statistics.median(xs)
        p90 = statistics.quantiles(xs, n=10)[-1]
        print(f"{name:<34} {med * 1000:>10.2f} {p90 * 1000:>8.2f} {(med - base) * 1000:>9.2f} {med / base:>6.2f}")
    added = (statistics.median(rows["router, image decoded + expert"]) - base) * 1000
    decode = statistics.median(rows["router, image + expert, incl. decode"]) - statistics.median(
        rows["router, image decoded + expert"]
    )
    print(
        f"\norchestration overhead: {added:.2f} ms median added per request with an image and a keyword-chosen "
        f"expert, image intake aside (target <= 2 ms): {'PASS' if added <= 2 else 'FAIL'}"
    )
    print(f"image intake (check, sha256, decode of a 640x480 PNG, once per request): {decode * 1000:.2f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    asyncio.run(main(ap.parse_args().requests))

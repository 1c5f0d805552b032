"""Issue 23: a model that quotes what the experts read loses nothing, on any route.

The corpus: the exact text of every real OCR page in tests/data/real (its truth lines, zh + en), and texts a
strong model writes when it transcribes faithfully: a receipt with repeated items, tables with equal rows, a
code block, a list, a refrain, chat transcripts with ``User:`` lines (zh + en). An OCR expert reads each
document's lines (so the findings hold them) and a scripted model answers with the document, token by token.
Every character must reach the user through ``ask``, the proxy's native and OpenAI routes (streamed or not)
and ``batch``; the trace lists nothing the filter took out.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from experts.base import Expert, ExpertArgs
from experts.registry import Registry
from experts.schema import TextLine
from router.apps.batch import run_batch
from router.core.config import Settings
from router.core.orchestrator import Orchestrator
from router.serve.proxy import ProxyServer, create_app
from tests.conftest import png_bytes
from tests.fake_ollama import FakeOllama, Reply
from tests.test_proxy_support import MODEL, models, ndjson, sse_events

TRUTH = Path(__file__).parent / "data" / "real" / "ocr" / "truth.json"
QUESTION = "Transcribe all the text in this image."  # the keyword table picks ocr: one answer turn

RECEIPT = "1 x Cappuccino  4.50\n1 x Cappuccino  4.50\n1 x Croissant  3.20\n1 x Cappuccino  4.50\nTotal  16.70"
HANDWRITTEN = {
    "receipt": RECEIPT,
    "receipt-zh": "拿铁 1 份 ¥28\n拿铁 1 份 ¥28\n拿铁 1 份 ¥28\n可颂 1 个 ¥15\n合计 ¥99",
    "table": "| item | qty | price |\n|---|---|---|\n| Cappuccino | 1 | 4.50 |\n| Cappuccino | 1 | 4.50 |\n"
    "| Cappuccino | 1 | 4.50 |\n| Total | 3 | 13.50 |",
    "code": "```python\nfor i in range(3):\n    print('hello')\n    print('hello')\n```\n"
    "The loop prints hello twice per pass.",
    "list": "Shopping list:\n- eggs\n- milk\n- eggs\n- bread\n- milk",
    "refrain": "Row, row, row your boat.\nGently down the stream.\nRow, row, row your boat.\nGently down the stream.\n"
    "Merrily, merrily, merrily, merrily.\nRow, row, row your boat.",
    "chat": "User: Is the shop open on Sunday?\nShop: Yes, from 10 to 4.\nUser: Is the shop open on Sunday?\n"
    "Shop: As I said, yes.\nAssistant: Anything else?\nUser: No, thanks.",
    "chat-zh": "用户：周日营业吗？\n店家：营业，10点到4点。\n用户：周日营业吗？\n店家：是的。\nSystem: message deleted",
    "sign": "NO PARKING. NO PARKING. NO PARKING. Tow-away zone.",
}


def real_pages() -> dict[str, str]:
    pages = json.loads(TRUTH.read_text("utf-8"))["images"]
    return {p["file"]: "\n".join(line["text"] for line in p["lines"]) for p in pages}


CORPUS = {**real_pages(), **HANDWRITTEN}


class ReadsTheDocument(Expert):
    """OCR that reads the current document's lines (the corpus text, line by line)."""

    name = "ocr"
    description = "reads the test document"
    Args = ExpertArgs
    lines: list[str] = []
    lock = threading.Lock()

    def _analyze(self, image, args):
        lines = list(ReadsTheDocument.lines)
        return self.new_result(image, text=[TextLine(text=t, score=0.99) for t in lines], full_text="\n".join(lines))


def registry() -> Registry:
    reg = Registry()
    reg.register(ReadsTheDocument)
    return reg


def settings() -> Settings:
    return Settings(cache_dir="", cache_items=0, fallback=["ocr"])  # nothing cached: every run reads anew


def image(i: int) -> bytes:
    return png_bytes(40 + i % 50, 30, (i % 256, 100, 100))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    f = FakeOllama(models()).start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def proxy(fake) -> Iterator[ProxyServer]:
    p = ProxyServer(create_app(settings(), registry(), fake.url)).start()
    yield p
    p.stop()


def reading(fake: FakeOllama, text: str) -> None:
    fake.reset()
    ReadsTheDocument.lines = text.splitlines()
    fake.responder = lambda path, body: Reply(text, chunk_size=7)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_ask_keeps_every_character(fake, name):
    text = CORPUS[name]
    reading(fake, text)
    seen: list[str] = []
    orch = Orchestrator(settings().model_copy(update={"ollama_host": fake.url}), registry=registry())
    final = orch.ask(QUESTION, [image(len(text))], on_text=seen.append)
    assert final.answer == text and "".join(seen) == text
    assert final.trace.filtered == []
    assert len(fake.calls("/api/chat")) == 1


def native(proxy: ProxyServer, stream: bool, chat: bool) -> str:
    img = base64.b64encode(image(3)).decode()
    if chat:
        body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": QUESTION, "images": [img]}]}
    else:
        body = {"model": MODEL, "stream": stream, "prompt": QUESTION, "images": [img]}
    r = httpx.post(proxy.url + ("/api/chat" if chat else "/api/generate"), json=body, timeout=60)
    key = (lambda o: o["message"]["content"]) if chat else (lambda o: o["response"])
    if not stream:
        return key(r.json())
    return "".join(key(o) for o in ndjson(r.content))


def openai(proxy: ProxyServer, stream: bool) -> str:
    url = "data:image/png;base64," + base64.b64encode(image(5)).decode()
    parts = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": parts}]}
    r = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
    if not stream:
        return r.json()["choices"][0]["message"]["content"]
    events = sse_events(r.content)
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])


ROUTES = ["chat-stream", "chat", "generate-stream", "generate", "openai-stream", "openai"]
# Every real page on one route each (rotating), every handwritten text on every route.
PROXY_CASES = [(n, ROUTES[i % len(ROUTES)]) for i, n in enumerate(sorted(real_pages()))] + [
    (n, r) for n in sorted(HANDWRITTEN) for r in ROUTES
]


@pytest.mark.parametrize("name,route", PROXY_CASES)
def test_the_proxy_keeps_every_character(fake, proxy, name, route):
    text = CORPUS[name]
    reading(fake, text)
    kind, _, streamed = route.partition("-")
    if kind == "openai":
        got = openai(proxy, bool(streamed))
    else:
        got = native(proxy, bool(streamed), chat=kind == "chat")
    assert got == text


def test_batch_keeps_every_character(fake, tmp_path):
    names = sorted(HANDWRITTEN)
    for i, name in enumerate(names):
        (tmp_path / f"{i:02d}-{name}.png").write_bytes(image(i))
    orch = Orchestrator(settings().model_copy(update={"ollama_host": fake.url}), registry=registry())
    for i, name in enumerate(names):
        reading(fake, HANDWRITTEN[name])
        out = io.StringIO()
        run_batch([str(tmp_path / f"{i:02d}-{name}.png")], orch, stream=out, question=QUESTION, progress=False)
        (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
        assert line["answer"] == HANDWRITTEN[name], name


def test_with_the_filter_off_even_scaffolding_passes(fake):
    """`[serve] answer_filter = false`: the model's text passes whole, scaffolding included."""
    text = "It says OPEN.\nUser: and now?"
    reading(fake, "OPEN")
    fake.responder = lambda path, body: Reply(text, chunk_size=5)
    s = settings().model_copy(update={"ollama_host": fake.url})
    s.serve.answer_filter = False
    assert Orchestrator(s, registry=registry()).ask(QUESTION, [image(1)]).answer == text
    on = Orchestrator(settings().model_copy(update={"ollama_host": fake.url}), registry=registry())
    final = on.ask(QUESTION, [image(2)])
    assert final.answer == "It says OPEN."
    assert final.trace.filtered[0]["why"] == "the model started another turn"

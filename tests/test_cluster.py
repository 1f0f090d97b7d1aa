"""A real two-node Ray cluster on loopback (a head and a node joined with `ray start
--address`, each in its own process group): actors sized per node, a node lost mid-run, a node
joining mid-run. Every run ends with an exactly-once check of the ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from skimage import data

import models
from pipeline.colorize.runner import node_threads, plan_slots
from tests.archive_helpers import freeze_with_gate, jpeg
from tests.test_deploy import BIN, ROOT, background, base_env, free_port


def _node(node_id: str, cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_actors_are_sized_per_node_not_from_the_cluster_sum():
    nodes = [_node(f"n{i}", 4) for i in range(10)] + [_node("dead", 4, alive=False)]
    slots = plan_slots(nodes)
    assert len(slots) == 10 and {s.node_id for s in slots} == {f"n{i}" for i in range(10)}
    assert {s.threads for s in slots} == {3} and {s.gpus for s in slots} == {0.0}  # not 40
    gpu = plan_slots([_node("g", 16, gpus=2), _node("c", 2)])
    assert [(s.node_id, s.gpus, s.threads) for s in gpu] == [("g", 1.0, 7), ("g", 1.0, 7),
                                                             ("c", 0.0, 2)]  # fmt: skip
    three = plan_slots([_node("a", 2), _node("b", 8)], actors=3)
    assert Counter(s.node_id for s in three) == {"a": 2, "b": 1}
    assert {s.node_id: s.threads for s in three} == {"a": 1, "b": 7}
    assert node_threads(1) == 1 and node_threads(2) == 2 and node_threads(32) == 31
    with pytest.raises(RuntimeError, match="no alive Ray node"):
        plan_slots([_node("x", 4, alive=False)])


def _archive(root: Path, n: int) -> int:
    root.mkdir(parents=True)
    photo = jpeg(data.astronaut(), 384)
    for i in range(n):
        (root / f"scan-{i:03d}.jpg").write_bytes(photo)
    return n


def _stats(dest: Path) -> list[dict]:
    folder = dest / "_stats"
    return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []


def _exactly_once(dest: Path, n: int) -> None:
    ids = pq.read_table([str(p) for p in dest.glob("*.parquet")], columns=["id"])["id"]
    counts = Counter(ids.to_pylist())
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    print(f"ids in {n}, out {len(counts)}, duplicated {duplicated}, lost {n - len(counts)}")
    assert len(counts) == n and duplicated == 0


class Cluster:
    """`ray start --head` and nodes joined to it, on loopback, with 1 CPU each."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.env = base_env(tmp_path)
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="arc", dir="/tmp")  # socket paths <= 107 bytes

    def head(self) -> Any:
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(self.port), "--include-dashboard", "false", "--num-cpus", "1",
               "--temp-dir", self.temp_dir, "--disable-usage-stats"]  # fmt: skip
        return background(cmd, self.env, self.tmp / "head.log")

    def node(self, name: str) -> Any:
        cmd = [str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{self.port}",
               "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--disable-usage-stats"]  # fmt: skip
        return background(cmd, self.env, self.tmp / f"{name}.log")

    def wait_nodes(self, count: int, seconds: float = 90) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            done = subprocess.run(
                [str(BIN / "python"), "-c",
                 f"import ray; ray.init(address='127.0.0.1:{self.port}', logging_level='ERROR');"
                 "print(sum(n['Alive'] for n in ray.nodes()))"],
                env=self.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {count} alive nodes")

    def colorize(self, src: Path, dest: Path, model: str) -> subprocess.Popen:
        cmd = [str(BIN / "archive-colorize"), "colorize", str(src), str(dest), "--model", model,
               "--shard-size", "1", "--batch-size", "1", "--ray-address",
               f"127.0.0.1:{self.port}"]  # fmt: skip
        log = (self.tmp / "colorize.log").open("w")
        return subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=log)


@pytest.fixture
def small_model_file(tmp_path: Path) -> str:
    path = tmp_path / "small.safetensors"
    models.save(models.build("small"), path)
    return str(path)


@pytest.mark.slow
def test_two_nodes_share_the_work_and_a_node_lost_mid_run_loses_nothing(tmp_path, small_model_file):
    n = _archive(tmp_path / "scans", 40)
    cluster, dest = Cluster(tmp_path), tmp_path / "colour"
    with cluster.head(), cluster.node("node-2") as second:
        cluster.wait_nodes(2)
        run = cluster.colorize(tmp_path / "scans", dest, small_model_file)
        deadline = time.time() + 240
        while time.time() < deadline and len({s["node"] for s in _stats(dest)}) < 2:
            time.sleep(0.2)  # without --actors, each node gets an actor: both commit shards
        nodes_before = {s["node"] for s in _stats(dest)}
        assert len(nodes_before) == 2, (nodes_before, (tmp_path / "colorize.log").read_text())
        os.killpg(second.pid, signal.SIGKILL)
        print(f"injected: killed the second node after {len(_stats(dest))} of {n} shards")
        assert run.wait(timeout=400) == 0, (tmp_path / "colorize.log").read_text()[-3000:]
    _exactly_once(dest, n)
    report = json.loads((dest / "report.json").read_text())
    assert sum(v["images"] for v in report["nodes"].values()) == n
    assert set(report["nodes"]) == nodes_before
    print(f"verified: per node {report['nodes']}; every id exactly once")


@pytest.mark.slow
def test_a_node_joining_mid_run_gets_work(tmp_path, small_model_file):
    n = _archive(tmp_path / "scans", 12)
    cluster, dest = Cluster(tmp_path), tmp_path / "colour"
    # scan-002 is a named pipe: the head's only actor holds its shard (and the one queued
    # behind it) until the test lets it through, so the run cannot end before the node joins
    gate = freeze_with_gate(tmp_path / "scans", dest, "scan-002.jpg")
    with cluster.head():
        cluster.wait_nodes(1)
        run = cluster.colorize(tmp_path / "scans", dest, small_model_file)
        try:
            gate.wait_reader()  # the barrier: the run is mid-shard, on the head alone
            first = {s["node"] for s in _stats(dest)}
            with cluster.node("node-2"):
                print(f"injected: a node joined after {len(_stats(dest))} of {n} shards")
                deadline = time.time() + 240
                while time.time() < deadline and len({s["node"] for s in _stats(dest)}) < 2:
                    time.sleep(0.2)  # until the newcomer has committed a shard
                nodes_at_release = Counter(s["node"] for s in _stats(dest))
                gate.release()
                assert run.wait(timeout=400) == 0, (tmp_path / "colorize.log").read_text()[-3000:]
        finally:
            if run.poll() is None:
                run.kill()
    _exactly_once(dest, n)
    nodes = Counter(s["node"] for s in _stats(dest))
    assert len(first) == 1 and len(nodes_at_release) == 2, nodes_at_release  # while held
    assert len(nodes) == 2 and sum(nodes.values()) == n, nodes
    print(f"verified: shards per node {dict(nodes)}; every id exactly once")

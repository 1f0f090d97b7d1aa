"""Running it the way a team does, against real servers on loopback: a Prefect server with the
deployments of deploy/prefect.yaml and a process worker, and `ray job submit` to a real Ray
head. Plus the cluster manifests, checked for the fields KubeRay and the launcher require."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import models
from pipeline.archive.pack import pack_images
from tests.archive_helpers import make_image_folder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@contextmanager
def background(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server in its own process group, stopped with SIGTERM (SIGKILL if it lingers)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture
def small_archive(tmp_path: Path) -> tuple[Path, str, int]:
    files = make_image_folder(tmp_path / "photos")
    pack_images(str(tmp_path / "photos"), str(tmp_path / "archive"), shard_size=4)
    model = tmp_path / "small.safetensors"
    models.save(models.build("small"), model)
    return tmp_path / "archive", str(model), len(files)


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        RAY_AUTH_MODE="disabled",
        ARCHIVE_COLORIZE_HOME=str(ROOT),
        COLUMNS="250",  # Prefect's tables would truncate deployment names
        ARCHIVE_COLORIZE_RAY_TEMP=tempfile.mkdtemp(prefix="acd", dir="/tmp"),
    )
    return env


def read_rows(dest: Path) -> list[dict]:
    return pq.read_table(
        [str(p) for p in sorted(dest.glob("*.parquet"))], columns=["id", "status"]
    ).to_pylist()


def test_prefect_server_deployment_and_worker_run_the_colorize_flow(tmp_path, small_archive):
    archive, model, n_images = small_archive
    port = free_port()
    env = base_env(tmp_path)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    server_cmd = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with background(server_cmd, env, tmp_path / "server.log"):
        wait_http(f"http://127.0.0.1:{port}/api/health", 90)
        prefect = str(BIN / "prefect")
        run([prefect, "work-pool", "create", "archive-colorize", "--type", "process"], env)
        deployed = run(
            [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"],
            env,
        )
        assert "nightly-colorize" in deployed.stdout and "weekly-train" in deployed.stdout
        listed = run([prefect, "deployment", "ls"], env).stdout
        assert (
            "colorize-archive/nightly-colorize" in listed and "train-model/weekly-train" in listed
        )
        worker_cmd = [prefect, "worker", "start", "--pool", "archive-colorize"]
        with background(worker_cmd, env, tmp_path / "worker.log"):
            dest = tmp_path / "colorized"
            params = {"source": str(archive), "dest": str(dest), "model": model}
            triggered = run(
                [prefect, "deployment", "run", "colorize-archive/nightly-colorize",
                 "--params", json.dumps(params), "--watch", "--watch-timeout", "400"],
                env, timeout=480,
            )  # fmt: skip
            assert "Completed" in triggered.stdout, triggered.stdout[-3000:]
    rows = read_rows(dest)
    assert len(rows) == n_images and len({r["id"] for r in rows}) == n_images
    assert (dest / "report.json").is_file()


def documented_ray_commands() -> list[str]:
    """The shell lines of docs/deploy.md's Ray block (comments dropped, continuations joined)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = text.split("<!-- ray-auth-commands")[1].split("```sh\n")[1].split("```")[0]
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


@pytest.mark.parametrize("after_local_run", [True, False], ids=["after-a-local-run", "fresh-home"])
def test_documented_ray_commands_with_token_auth(tmp_path, small_archive, after_local_run):
    """docs/deploy.md's commands as written (ports and paths swapped for free ones), in a HOME
    where a local colorize run left ~/.ray/auth_token, and in one where nothing is there."""
    archive, model, n_images = small_archive
    env = base_env(tmp_path)
    env.pop("RAY_AUTH_MODE")  # as a user's shell: Ray's own default for local runs
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    if after_local_run:
        run([str(BIN / "archive-colorize"), "colorize", str(archive), str(tmp_path / "local"),
             "--model", model], env, timeout=300)  # fmt: skip
        assert (tmp_path / "home" / ".ray" / "auth_token").is_file()  # what Ray 2.60 leaves
    temp_dir = tempfile.mkdtemp(prefix="arh", dir="/tmp")  # short: socket paths <= 107 bytes
    gcs, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    dest = tmp_path / "colorized"
    swap = {"6379": str(gcs), "8265": str(dashboard), "SRC": str(archive), "DEST": str(dest),
            "--model default": f"--model {model}"}  # fmt: skip
    lines = documented_ray_commands()
    for i, line in enumerate(lines):
        for old, new in swap.items():
            line = line.replace(old, new)
        lines[i] = line
    export, token, head, submit = lines
    assert export == "export RAY_AUTH_MODE=token" and head.startswith("ray start --head")
    env["RAY_AUTH_MODE"] = export.split("=")[1]
    run(["bash", "-c", token.replace("ray ", f"{BIN}/ray ", 1)], env)
    # the head in the foreground of its own process group (--block), so that the test stops it
    # alone; a private temp dir and free ports for the rest
    head_cmd = [str(BIN / "ray"), *head.split()[1:], "--block", "--node-ip-address", "127.0.0.1",
                "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port",
                str(client), "--num-cpus", "2", "--temp-dir", temp_dir,
                "--disable-usage-stats"]  # fmt: skip
    with background(head_cmd, env, tmp_path / "ray-head.log"):
        deadline = time.time() + 90
        status = None
        while time.time() < deadline and status != 401:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/jobs/", timeout=2)
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.5)
            if status == 200:
                break
        assert status == 401, f"the job API must refuse a call without the token, got {status}"
        submitted = run(["bash", "-c", submit.replace("ray job", f"{BIN}/ray job", 1)], env,
                        timeout=480)  # fmt: skip
        assert "succeeded" in submitted.stdout, submitted.stdout[-3000:]
    rows = read_rows(dest)
    assert len(rows) == n_images and {r["status"] for r in rows} == {"ok", "error"}


def test_kuberay_and_launcher_manifests_are_well_formed():
    cluster = yaml.safe_load((ROOT / "deploy/ray/raycluster.yaml").read_text())
    job = yaml.safe_load((ROOT / "deploy/ray/rayjob.yaml").read_text())
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("archive-colorize colorize")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"  # the head takes no work
        assert head["template"]["spec"]["containers"][0]["image"]
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"gpu", "cpu"}
        for group in groups.values():
            assert {"replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(
                group
            )
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert group["template"]["spec"]["containers"][0]["image"]
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu["nvidia.com/gpu"] == "1"
        # token auth on every node, the token from a secret (never in the manifest)
        for template in [head["template"], *(g["template"] for g in groups.values())]:
            env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert {e["name"] for e in submitter["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    launcher = yaml.safe_load((ROOT / "deploy/ray/cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(launcher)
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert launcher["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    starts = launcher["head_start_ray_commands"][1:] + launcher["worker_start_ray_commands"][1:]
    assert all(c.startswith("export RAY_AUTH_MODE=token && ray start") for c in starts)
    assert "--dashboard-host=127.0.0.1" in launcher["head_start_ray_commands"][1]
    deployments = yaml.safe_load((ROOT / "deploy/prefect.yaml").read_text())["deployments"]
    by_name = {d["name"]: d for d in deployments}
    assert by_name["nightly-colorize"]["concurrency_limit"]["limit"] == 1
    assert by_name["nightly-colorize"]["schedules"][0]["cron"] == "0 2 * * *"
    for d in deployments:
        path, func = d["entrypoint"].split(":")
        assert func in (ROOT / path).read_text()
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert "FROM " in dockerfile and "pip install" in dockerfile

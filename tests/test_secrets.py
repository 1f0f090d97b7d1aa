"""A run with AWS keys and a Prefect API key set must not write or print them anywhere: its
output, the archive's report, stats and gallery, Prefect's database (logs, artifacts) and
Ray's session logs are searched for the secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest

from tests.archive_helpers import make_image_folder

pytestmark = pytest.mark.slow


def _files_containing(root: Path, secrets: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {s[:6]!r}..." for s in secrets if s in data]
    return hits


def test_a_run_leaks_no_secret(tmp_path, s3_server):
    key_id = "AKIA" + uuid.uuid4().hex[:16].upper()
    secret = "sk-" + uuid.uuid4().hex + uuid.uuid4().hex
    prefect_key = "pnu_" + uuid.uuid4().hex
    secrets = [s.encode() for s in (key_id, secret, prefect_key)]
    env_keys = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=key_id,
                      aws_secret_access_key=secret)  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    for rel, blob in make_image_folder(tmp_path / "photos").items():
        s3.put_object(Bucket=bucket, Key=f"scans/{rel}", Body=blob)
    ray_temp = tempfile.mkdtemp(prefix="acs", dir="/tmp")
    env = {**os.environ, **env_keys, "PREFECT_API_KEY": prefect_key}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), ARCHIVE_COLORIZE_RAY_TEMP=ray_temp)
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "colorize", f"s3://{bucket}/scans",
         f"s3://{bucket}/out", "--s3-endpoint-url", s3_server, "--shard-size", "4"],
        env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert not [s for s in secrets if s in printed], "a secret was printed"
    written = []
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]:
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        written += [obj["Key"] for s in secrets if s in body]
    assert not written, f"secrets in the archive: {written}"
    prefect_hits = _files_containing(tmp_path / "prefect", secrets)  # logs, artifacts (SQLite)
    ray_hits = _files_containing(Path(ray_temp), secrets)  # driver, worker and raylet logs
    assert not prefect_hits and not ray_hits, prefect_hits + ray_hits
    searched = sum(1 for p in [*Path(ray_temp).rglob("*"), *(tmp_path / "prefect").rglob("*")]
                   if p.is_file())  # fmt: skip
    print(
        f"injected: AWS keys and a Prefect API key; verified: none in {len(printed)} bytes of "
        f"output, the archive's objects, or {searched} Prefect and Ray files"
    )

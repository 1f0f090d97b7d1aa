"""A run with AWS keys and a Prefect API key set must not write or print them anywhere: its
output, the archive's report, stats and gallery, Prefect's database (logs, artifacts) and
Ray's session logs are searched for the secrets."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import boto3
import pytest

from tests.archive_helpers import make_image_folder

pytestmark = pytest.mark.slow


def encodings(secret: str) -> list[bytes]:
    """The secret as it could leak: raw, URL-encoded (either case of the hex digits, and with
    `+` for spaces), and base64 (standard and URL-safe) at each of the three alignments that
    it can have inside a longer encoded blob (the groups it shares with its neighbours cut)."""
    raw = secret.encode()
    quoted = [quote(secret, safe=""), quote_plus(secret, safe="")]
    forms = {raw, *(q.encode() for q in quoted), *(q.encode().lower() for q in quoted)}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw)
            whole = (len(raw) + offset) // 3 * 4  # chars of groups that are all ours or pad
            forms.add(text[4 if offset else 0 : whole])
    return sorted(forms)


def _files_containing(root: Path, forms: list[bytes]) -> tuple[list[str], int]:
    """Files under `root` holding any of `forms`, and how many files were searched."""
    hits, searched = [], 0
    for path in root.rglob("*"):
        if path.is_file():
            searched += 1
            data = path.read_bytes()
            hits += [f"{path}: {s[:6]!r}..." for s in forms if s in data]
    return hits, searched


def test_the_searched_encodings_find_a_leak():
    secret = "sk/" + "ab" * 20 + "+end"
    forms = encodings(secret)
    for blob in (
        b"log: " + secret.encode() + b" done",
        b"url=https://h/?k=" + quote(secret, safe="").encode() + b"&x=1",
        *(b"Authorization: Basic " + base64.b64encode(b"u" * k + b":" + secret.encode())
          for k in range(3)),
        base64.urlsafe_b64encode(b"{'key': '" + secret.encode() + b"'}"),
    ):  # fmt: skip
        assert any(f in blob for f in forms), blob
    assert all(len(f) >= 16 for f in forms)


def test_a_run_leaks_no_secret(tmp_path, s3_server):
    key_id = "AKIA" + uuid.uuid4().hex[:16].upper()
    secret = "sk/" + uuid.uuid4().hex + "+" + uuid.uuid4().hex  # "/" and "+", as AWS's have
    prefect_key = "pnu_" + uuid.uuid4().hex
    secrets = [form for s in (key_id, secret, prefect_key) for form in encodings(s)]
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
    prefect_hits, prefect_files = _files_containing(tmp_path / "prefect", secrets)  # logs, DB
    ray_hits, ray_files = _files_containing(Path(ray_temp), secrets)  # driver, worker, raylet
    assert not prefect_hits and not ray_hits, prefect_hits + ray_hits
    # the search saw the files where a leak would be: Prefect's database, and Ray's session
    # logs (the raylet's, the GCS's and each worker's); if either moved, this fails
    assert list((tmp_path / "prefect").rglob("*.db")), "Prefect's database was not searched"
    ray_logs = [p.name for p in Path(ray_temp).glob("session_*/logs/*") if p.is_file()]
    assert "raylet.out" in ray_logs and "gcs_server.out" in ray_logs, ray_logs
    assert sum(n.startswith(("worker-", "python-core-worker-")) for n in ray_logs) >= 2, ray_logs
    assert prefect_files >= 1 and ray_files >= 20, (prefect_files, ray_files)
    print(
        f"injected: AWS keys and a Prefect API key; verified: none of {len(secrets)} encodings "
        f"in {len(printed)} bytes of output, the archive's objects, or {prefect_files} Prefect "
        f"and {ray_files} Ray files"
    )

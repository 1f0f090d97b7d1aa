"""S3 end to end against a real S3 server on loopback, reached by boto3 and pyarrow over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

import models
from flows.colorize import colorize_archive
from pipeline.archive import storage
from pipeline.archive.pack import pack_images
from tests.archive_helpers import make_image_folder
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def bucket(s3_server: str):
    name = f"archive-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    storage.configure(s3_server)
    yield name
    storage.configure(None)


def _keys(s3_server: str, bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_server)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_storage_round_trip(s3_server, bucket):
    uri = f"s3://{bucket}/a/b.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"hello")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"hello"
    storage.write_bytes(f"s3://{bucket}/a/c/d.bin", b"x")
    assert list(storage.list_files(f"s3://{bucket}/a")) == [uri, f"s3://{bucket}/a/c/d.bin"]
    single = f"s3://{bucket}/a/c/d.bin"  # a URI naming one object lists that object
    assert list(storage.list_files(single)) == [single]
    assert storage.source_exists(f"s3://{bucket}/a") and not storage.source_exists(
        f"s3://{bucket}/z"
    )
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError):  # missing is missing, on S3 as on a disk
        storage.read_bytes(uri)


def test_pack_and_colorize_s3_to_s3(tmp_path: Path, s3_server, bucket, ray_local):  # noqa: F811
    files = make_image_folder(tmp_path / "photos")
    for rel, blob in files.items():
        storage.write_bytes(f"s3://{bucket}/incoming/{rel}", blob)
    model_path = tmp_path / "small.safetensors"
    models.save(models.build("small"), model_path)
    storage.write_bytes(f"s3://{bucket}/models/small.safetensors", model_path.read_bytes())

    pack_images(f"s3://{bucket}/incoming", f"s3://{bucket}/packed", shard_size=4)
    assert _keys(s3_server, bucket, "packed/") == [
        "packed/_pack.json",
        *(f"packed/part-0000{i}.parquet" for i in range(3)),
    ]
    result = colorize_archive(
        f"s3://{bucket}/packed",
        f"s3://{bucket}/out",
        model=f"s3://{bucket}/models/small.safetensors",
        s3_endpoint_url=s3_server,
    )
    keys = _keys(s3_server, bucket, "out/")
    for i in range(3):
        assert f"out/part-0000{i}.parquet" in keys and f"out/_stats/part-0000{i}.json" in keys
    assert {"out/report.json", "out/report.md", "out/contact_sheet.png"} <= set(keys)
    assert not any("tmp" in k for k in keys)
    fs, _ = storage.arrow_fs(f"s3://{bucket}/out")
    parts = [f"{bucket}/{k}" for k in keys if k.endswith(".parquet") and "/_" not in k]
    table = pq.read_table(parts, filesystem=fs)
    assert sorted(table["id"].to_pylist()) == sorted(files)
    # the model is named as the user named it, so the next scheduled run's manifest check matches
    assert {m.split("@")[0] for m in table["model"].to_pylist()} == {"small.safetensors"}
    assert result["images"] == len(files) and result["errors"] == 3
    report = json.loads(storage.read_bytes(f"s3://{bucket}/out/report.json"))
    assert report["shards"]["done"] == 3

    again = colorize_archive(
        f"s3://{bucket}/packed",
        f"s3://{bucket}/out",
        model=f"s3://{bucket}/models/small.safetensors",
        s3_endpoint_url=s3_server,
    )
    assert again["shards"]["skipped"] == 3 and again["shards"]["done"] == 0


def test_image_prefix_on_s3_to_local_dest(tmp_path: Path, s3_server, bucket, ray_local):  # noqa: F811
    files = make_image_folder(tmp_path / "photos", bad=False)
    for rel, blob in files.items():
        storage.write_bytes(f"s3://{bucket}/scans/{rel}", blob)
    model_path = tmp_path / "small.safetensors"
    models.save(models.build("small"), model_path)
    result = colorize_archive(
        f"s3://{bucket}/scans",
        str(tmp_path / "out"),
        model=str(model_path),
        shard_size=5,
        s3_endpoint_url=s3_server,
    )
    assert result["ok"] == len(files)
    parts = [str(p) for p in (tmp_path / "out").glob("*.parquet")]
    table = pq.read_table(parts, columns=["id", "status"])
    assert sorted(table["id"].to_pylist()) == sorted(files)


def test_colorize_and_evaluate_leave_no_temp_file(tmp_path: Path, s3_server, bucket):
    """colorize and evaluate over a 3-shard archive on S3, the model on S3 too, leave nothing in
    the temp folder of any of their processes: the flow's, the Ray actors' and tasks'. They run
    in a process of their own with a fresh TMPDIR, which its own local Ray and every worker it
    starts inherit (the session's Ray started with another)."""
    files = make_image_folder(tmp_path / "photos")
    for rel, blob in files.items():
        storage.write_bytes(f"s3://{bucket}/incoming/{rel}", blob)
    pack_images(f"s3://{bucket}/incoming", f"s3://{bucket}/packed", shard_size=4)
    assert len(_keys(s3_server, bucket, "packed/")) == 4  # 3 shards and _pack.json
    model_path = tmp_path / "small.safetensors"
    models.save(models.build("small"), model_path)
    storage.write_bytes(f"s3://{bucket}/models/small.safetensors", model_path.read_bytes())
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = textwrap.dedent(
        f"""
        import json, sys
        from flows.colorize import colorize_archive
        from flows.evaluate import evaluate_model
        where = dict(model="s3://{bucket}/models/small.safetensors", s3_endpoint_url="{s3_server}")
        colorized = colorize_archive("s3://{bucket}/packed", "s3://{bucket}/out", **where)
        evaluated = evaluate_model("s3://{bucket}/packed", out="s3://{bucket}/eval", split="all",
                                   **where)
        json.dump([colorized["shards"], evaluated["images"]], open(sys.argv[1], "w"))
        """
    )
    env = {**os.environ, "TMPDIR": str(temp),
           "ARCHIVE_COLORIZE_RAY_TEMP": tempfile.mkdtemp(prefix="acr", dir="/tmp")}  # fmt: skip
    outcome = tmp_path / "outcome.json"
    run = subprocess.run([sys.executable, "-c", script, str(outcome)], env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    shards, evaluated = json.loads(outcome.read_text())
    assert shards["done"] == 3 and not shards["failed"] and evaluated == 4  # 4 colour photos
    assert sorted(p.relative_to(temp).as_posix() for p in temp.rglob("*")) == []

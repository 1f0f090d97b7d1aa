"""S3 faults under a real run: a fault-injecting proxy (tests/s3_faults.py) in front of a real
S3 server. Each run ends with an exactly-once check of the ids, and every committed shard must
be whole (no torn object may ever count as committed)."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter

import boto3
import pyarrow.parquet as pq
import pytest
from skimage import data

from flows.colorize import colorize_archive
from pipeline.archive import manifest, storage
from pipeline.review.report import load_committed_stats
from tests.archive_helpers import jpeg
from tests.s3_faults import FaultProxy
from tests.test_archive import ray_local, small_model  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.slow
IMAGES = 24


@pytest.fixture
def proxy(s3_server):
    faults = FaultProxy(s3_server)
    yield faults
    faults.close()
    storage.configure(None)


def _scans(bucket: str, endpoint: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    ids = []
    for i in range(IMAGES):
        photo = jpeg([data.astronaut(), data.coffee(), data.chelsea()][i % 3], 256)
        client.put_object(Bucket=bucket, Key=f"scans/{i:03d}.jpg", Body=photo)
        ids.append(f"{i:03d}.jpg")
    return ids


def _check(bucket: str, endpoint: str, ids: list[str], proxy: FaultProxy) -> None:
    """Every id exactly once, and every committed shard whole and as its stats say."""
    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    out_ids: Counter[str] = Counter()
    for key in keys:
        if not key.startswith("out/_stats/"):
            continue
        stats = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        shard = client.get_object(Bucket=bucket, Key=f"out/{stats['shard']}.parquet")
        table = pq.read_table(io.BytesIO(shard["Body"].read()))  # a torn file would not parse
        assert table.num_rows == stats["rows"], stats["shard"]
        out_ids.update(table["id"].to_pylist())
    duplicated = sum(c - 1 for c in out_ids.values() if c > 1)
    lost = len(set(ids) - set(out_ids))
    print(f"injected: {dict(proxy.injected)} over {sum(proxy.requests.values())} requests")
    print(f"verified: ids in {len(ids)}, out {len(out_ids)}, duplicated {duplicated}, "
          f"lost {lost}; every committed shard whole")  # fmt: skip
    assert duplicated == 0 and lost == 0 and len(out_ids) == len(ids)


def _run(bucket: str, proxy: FaultProxy, model: str) -> dict:
    return colorize_archive(f"s3://{bucket}/scans", f"s3://{bucket}/out", model=model,
                            shard_size=4, s3_endpoint_url=proxy.url)  # fmt: skip


def test_503_slow_down_at_a_rate(proxy, s3_server, ray_local, small_model):  # noqa: F811
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    ids = _scans(bucket, s3_server)
    proxy.rate_503 = 0.15
    result = _run(bucket, proxy, small_model)
    assert result["shards"]["failed"] == [] and proxy.injected["503 SlowDown"] > 5
    _check(bucket, s3_server, ids, proxy)


def test_connections_cut_mid_body_while_writing(proxy, s3_server, ray_local, small_model):  # noqa: F811
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    ids = _scans(bucket, s3_server)
    seen: set[str] = set()

    def first_put_of_each_output(path: str) -> bool:
        key = path.split("?")[0]
        if "/out/" in key and key.endswith((".parquet", ".json")) and key not in seen:
            seen.add(key)  # every output shard and stats file: its first upload dies halfway
            return True
        return False

    proxy.cut_put = first_put_of_each_output
    result = _run(bucket, proxy, small_model)
    assert result["shards"]["failed"] == []
    assert proxy.injected["cut mid-body (PUT)"] >= 2 * (IMAGES // 4)
    _check(bucket, s3_server, ids, proxy)


def test_an_outage_after_the_first_commit(proxy, s3_server, ray_local, small_model):  # noqa: F811
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    ids = _scans(bucket, s3_server)

    def first_commit(method: str, path: str) -> bool:
        return method == "PUT" and "/out/_stats/" in path

    # from the first shard's commit on, the network is dead for the next 7 requests, whoever
    # sends them: every call may try 8 times (pipeline/archive/storage.py), so the run rides it out
    dropped = 7
    proxy.outage_after(first_commit, dropped)
    result = _run(bucket, proxy, small_model)
    assert proxy.injected["outage: connection dropped"] == dropped
    faults = [f for _, _, f in proxy.history]
    commits = [i for i, (m, p, f) in enumerate(proxy.history) if first_commit(m, p) and not f]
    first_drop, last_drop = faults.index("outage"), len(faults) - 1 - faults[::-1].index("outage")
    assert first_drop == commits[0] + 1  # it started at the first commit ...
    assert last_drop < commits[-1]  # ... and was over before the last one: mid-run
    assert len(commits) == IMAGES // 4
    assert result["shards"]["failed"] == [] and result["shards"]["done"] == IMAGES // 4
    _check(bucket, s3_server, ids, proxy)


def test_missing_keys_answering_403(proxy, s3_server, ray_local, small_model, tmp_path):  # noqa: F811
    """Without s3:ListBucket, S3 answers a missing key with 403 AccessDenied, not 404: such a
    key reads as a missing local file does, and a whole run and its rerun go as usual."""
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    ids = _scans(bucket, s3_server)
    proxy.missing_as_403 = True
    storage.configure(proxy.url)
    for dest in (str(tmp_path / "out"), f"s3://{bucket}/out"):
        missing = storage.join(dest, "nothing.json")
        assert not storage.exists(missing)
        with pytest.raises(FileNotFoundError, match="permission" if "s3" in dest else "nothing"):
            storage.read_bytes(missing)
        assert storage.read_json(missing) is None
        assert manifest.read(dest) is None and load_committed_stats(dest) == []
    assert proxy.injected["404 answered as 403 AccessDenied"] >= 3
    result = _run(bucket, proxy, small_model)
    assert result["shards"]["failed"] == [] and result["shards"]["done"] == IMAGES // 4
    _check(bucket, s3_server, ids, proxy)
    again = _run(bucket, proxy, small_model)
    assert again["shards"]["done"] == 0 and again["shards"]["skipped"] == IMAGES // 4

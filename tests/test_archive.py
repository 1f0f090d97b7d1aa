"""The main job end to end: real local Ray, Prefect's engine (ephemeral API), real Parquet."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image

import models
from flows.colorize import ConfigError, colorize_archive
from pipeline.archive.pack import pack_images
from tests.archive_helpers import freeze_with_gate, make_image_folder, read_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=os.environ["ARCHIVE_COLORIZE_RAY_TEMP"],
        )
    yield
    # left running for the other modules of the session; Ray stops with the process


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    # seeded: a session fixture is made before the autouse seed, when torch's generator still
    # has its random start; an untrained net's colours vary with its draw, and whether a colder
    # temperature makes them more colourful (test_cli_runs) held for about half of the draws
    torch.manual_seed(0)
    models.save(models.build("small"), path)
    return str(path)


def test_pack_then_colorize_parquet_archive(tmp_path: Path, ray_local, small_model):
    files = make_image_folder(tmp_path / "photos")
    shards = pack_images(str(tmp_path / "photos"), str(tmp_path / "packed"), shard_size=4)
    assert len(shards) == 3
    packed = pq.read_table(tmp_path / "packed").to_pylist()
    assert sorted(r["id"] for r in packed) == sorted(files)
    assert {r["filename"] for r in packed} >= {"astronaut.jpg", "camera16.png"}

    result = colorize_archive(
        str(tmp_path / "packed"), str(tmp_path / "out"), model=small_model, batch_size=3
    )
    rows = read_output(tmp_path / "out")
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == len(files) and set(by_id) == set(files)  # exactly one row per input
    for rel in files:
        expected = "error" if rel.startswith("bad/") else "ok"
        assert by_id[rel]["status"] == expected, (rel, by_id[rel]["error"])
    assert "zero-byte" in by_id["bad/empty.jpg"]["error"]
    assert "truncated" in by_id["bad/truncated.jpg"]["error"]
    assert "not a recognised image" in by_id["bad/not_an_image.png"]["error"]
    # ground-truth metrics only where the input had colour; colourfulness always
    assert by_id["colour/coffee.jpg"]["psnr"] > 10 and 0 < by_id["colour/coffee.jpg"]["auc"] <= 1
    assert (
        by_id["gray/camera.png"]["psnr"] is None and by_id["gray/camera.png"]["colorfulness"] >= 0
    )
    # metadata passes through (pack's width/height clash with ours and are renamed)
    assert by_id["colour/coffee.jpg"]["filename"] == "coffee.jpg"
    assert by_id["colour/coffee.jpg"]["source_width"] == by_id["colour/coffee.jpg"]["width"]
    assert by_id["colour/coffee.jpg"]["model"].startswith("small.safetensors@")

    out_tables = {p.stem: pq.read_table(p) for p in (tmp_path / "out").glob("*.parquet")}
    coffee = next(
        t.filter(pa.compute.equal(t["id"], "colour/coffee.jpg"))
        for t in out_tables.values()
        if "colour/coffee.jpg" in t["id"].to_pylist()
    )
    img = Image.open(io.BytesIO(coffee["image"][0].as_py()))
    assert img.format == "JPEG" and img.size == (
        coffee["width"][0].as_py(),
        coffee["height"][0].as_py(),
    )
    assert img.info.get("icc_profile")
    gray16 = next(
        t.filter(pa.compute.equal(t["id"], "gray/camera16.png"))
        for t in out_tables.values()
        if "gray/camera16.png" in t["id"].to_pylist()
    )
    img16 = Image.open(io.BytesIO(gray16["image"][0].as_py()))
    assert img16.format == "PNG"

    stats = sorted((tmp_path / "out" / "_stats").glob("*.json"))
    assert [p.stem for p in stats] == ["part-00000", "part-00001", "part-00002"]
    assert result["images"] == len(files) and result["errors"] == 3
    assert result["shards"]["done"] == 3 and result["shards"]["skipped"] == 0
    for name in ("report.json", "report.md", "metrics.png", "contact_sheet.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert Image.open(tmp_path / "out" / "contact_sheet.png").size[1] > 128
    assert not (tmp_path / "out" / "_tmp").exists()  # staging cleaned up
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["errors_by_kind"] == {"corrupt": 1, "empty": 1, "not_an_image": 1}
    assert report["metrics"]["auc"]["count"] == 4  # the four colour photos

    # the network's uncertainty on every ok row (none on error rows), summarised in the report
    for r in rows:
        assert (0 < r["uncertainty"] < 1) if r["status"] == "ok" else r["uncertainty"] is None
    assert report["metrics"]["uncertainty"]["count"] == len(files) - 3
    # the workers wrote each ok row's gallery images, named by shard and row position
    ok_rows = 0
    for name, table in out_tables.items():
        for position, status in enumerate(table["status"].to_pylist()):
            for kind, longest in (("thumbs", 192), ("view", 1024)):
                for side in ("in", "out"):
                    path = tmp_path / "out" / "gallery" / kind / name / f"{position:06d}-{side}.jpg"
                    assert path.is_file() == (status == "ok"), path
                    if status == "ok":
                        assert max(Image.open(path).size) <= longest
            ok_rows += status == "ok"
    assert ok_rows == len(files) - 3

    # a re-run does nothing and changes nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.parquet")}
    again = colorize_archive(str(tmp_path / "packed"), str(tmp_path / "out"), model=small_model)
    assert again["shards"]["done"] == 0 and again["shards"]["skipped"] == 3
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.parquet")} == before


def test_folder_source_keeps_shards_stable_when_files_are_added(tmp_path, ray_local, small_model):
    files = make_image_folder(tmp_path / "photos", bad=False)
    colorize_archive(
        str(tmp_path / "photos"), str(tmp_path / "out"), model=small_model, shard_size=4
    )
    first = {r["id"]: r["_shard"] for r in read_output(tmp_path / "out")}
    assert set(first) == set(files) and set(first.values()) == {"files-00000", "files-00001"}
    # a new file sorts first, but committed shards keep their files; it lands in a new shard
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photos" / "aaa_new.png")
    result = colorize_archive(
        str(tmp_path / "photos"), str(tmp_path / "out"), model=small_model, shard_size=4
    )
    assert result["shards"] == {**result["shards"], "done": 1, "skipped": 2}
    rows = read_output(tmp_path / "out")
    assert len(rows) == len(files) + 1 and len({r["id"] for r in rows}) == len(rows)
    assert {r["id"]: r["_shard"] for r in rows}["aaa_new.png"] == "files-00002"


def test_bad_requests_fail_before_any_work(tmp_path, ray_local, small_model):
    make_image_folder(tmp_path / "photos", bad=False)
    pack_images(str(tmp_path / "photos"), str(tmp_path / "packed"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="does not exist"):
        colorize_archive(str(tmp_path / "nowhere"), str(out), model=small_model)
    with pytest.raises(ConfigError, match="--model"):
        colorize_archive(
            str(tmp_path / "packed"), str(out), model=str(tmp_path / "nope.safetensors")
        )
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"models\.save"):
        colorize_archive(
            str(tmp_path / "packed"), str(out), model=str(tmp_path / "junk.safetensors")
        )
    with pytest.raises(ConfigError, match="--image-column"):
        colorize_archive(str(tmp_path / "packed"), str(out), model=small_model, image_column="img")
    with pytest.raises(ConfigError, match="--batch-size"):
        colorize_archive(str(tmp_path / "packed"), str(out), model=small_model, batch_size=0)
    with pytest.raises(ConfigError, match="--temperature"):
        colorize_archive(str(tmp_path / "packed"), str(out), model=small_model, temperature=-1)
    assert not out.exists() or not list(out.rglob("*.parquet"))


def test_hugging_face_struct_column_and_missing_id(tmp_path, ray_local, small_model):
    files = make_image_folder(tmp_path / "photos", bad=False)
    images = [{"bytes": blob, "path": rel} for rel, blob in files.items()]
    src = tmp_path / "hf"
    src.mkdir()
    pq.write_table(pa.table({"img": images, "caption": list(files)}), src / "train-0.parquet")
    colorize_archive(str(src), str(tmp_path / "out"), model=small_model, image_column="img")
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == [f"train-0:{i}" for i in range(len(files))]
    assert [r["caption"] for r in rows] == list(files)
    assert all(r["status"] == "ok" for r in rows)


def test_actor_killed_mid_run_is_retried_and_output_is_complete(tmp_path, ray_local, small_model):
    files = make_image_folder(tmp_path / "photos", bad=False, size=320)
    for i in range(6):
        (tmp_path / "photos" / f"extra/{i}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "photos" / f"extra/{i}.jpg").write_bytes(files["colour/astronaut.jpg"])
    n_files = len(files) + 6
    out = tmp_path / "out"
    # one image is a named pipe: its shard stays in flight until the test lets it through
    gate = freeze_with_gate(tmp_path / "photos", out, "extra/3.jpg")
    listing = json.loads((out / "_listing.json").read_text())
    [gated] = [s["name"] for s in listing["shards"] if s["files"] == ["extra/3.jpg"]]
    result: dict = {}

    def run() -> None:
        result.update(colorize_archive(str(tmp_path / "photos"), str(out), model=small_model))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        gate.wait_reader()  # the barrier: the actor is reading the gated shard's image
        committed = len(list((out / "_stats").glob("*.json")))
        names = [n for n in ray.util.list_named_actors(all_namespaces=True)]
        colorizers = [n for n in names if n["name"].startswith("colorizer-")]
        assert len(colorizers) == 1, names  # one local node: one actor, the gate's reader
        victim = ray.get_actor(colorizers[0]["name"], namespace=colorizers[0]["namespace"])
        ray.kill(victim, no_restart=False)  # dies with shards in flight; Ray restarts it
        gate.wait_reader_gone()  # ray.kill returns before the process is gone
        gate.drop()
        gate.wait_reader()  # the gated shard's next attempt, on the restarted actor
        gate.release()
    finally:
        thread.join(timeout=300)
    assert not thread.is_alive()
    print(f"injected: killed the actor mid-shard after {committed} of {n_files} shards")
    assert committed < n_files - 1  # shards were still to do
    assert result["retries"] >= 1 and result["shards"]["failed"] == []
    assert json.loads((out / "_stats" / f"{gated}.json").read_text())["attempt"] == 2
    rows = read_output(out)
    assert len(rows) == n_files and len({r["id"] for r in rows}) == n_files
    assert all(r["status"] == "ok" for r in rows)


def test_whole_run_killed_then_rerun_completes_without_duplicates(tmp_path, small_model):
    files = make_image_folder(tmp_path / "photos", size=320)
    for i in range(40):  # enough shards that the kill lands mid-run
        (tmp_path / "photos" / f"extra/{i}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "photos" / f"extra/{i}.jpg").write_bytes(files["colour/coffee.jpg"])
    n_files = len(files) + 40
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "flows.cli", "colorize", str(tmp_path / "photos"), str(out),
        "--model", small_model, "--shard-size", "1", "--batch-size", "1",
    ]  # fmt: skip
    # Ray's socket paths must stay under 107 bytes: a short private temp dir
    env = {**os.environ, "ARCHIVE_COLORIZE_RAY_TEMP": tempfile.mkdtemp(prefix="acr", dir="/tmp")}
    log = (tmp_path / "first-run.log").open("w")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=log)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if len(list((out / "_stats").glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, 9)  # the driver, its local Ray and the actors, all at once
    proc.wait()
    committed = {p.stem: p.stat().st_mtime_ns for p in (out / "_stats").glob("*.json")}
    assert 2 <= len(committed) < n_files, (tmp_path / "first-run.log").read_text()[-3000:]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped" in done.stdout
    rows = read_output(out)
    assert len(rows) == n_files and len({r["id"] for r in rows}) == n_files  # no loss, no dups
    # committed shards were not redone
    for name, mtime in committed.items():
        assert (out / "_stats" / f"{name}.json").stat().st_mtime_ns == mtime


def test_pack_command_line(tmp_path):
    from flows import cli

    files = make_image_folder(tmp_path / "photos", bad=False)
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["pack", str(tmp_path / "photos"), str(tmp_path / "packed"), "--shard-size", "4"])
    assert exit_code.value.code == 0
    table = pq.read_table(sorted(str(p) for p in (tmp_path / "packed").glob("*.parquet")))
    assert sorted(table["id"].to_pylist()) == sorted(files)
    shards = {p.name for p in (tmp_path / "packed").glob("*.parquet")}
    # no _tmp left behind; the record of what DEST is packed from
    assert {p.name for p in (tmp_path / "packed").iterdir()} == shards | {"_pack.json"}
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["pack", str(tmp_path / "missing"), str(tmp_path / "packed2")])
    assert exit_code.value.code == 2


def test_pack_into_a_dest_of_another_source_refuses_and_a_rerun_keeps_its_boundaries(tmp_path):
    from pipeline.archive.pack import pack_images
    from pipeline.archive.shards import SourceError

    files = make_image_folder(tmp_path / "photos", bad=False)  # 6 images
    packed = tmp_path / "packed"
    uris = pack_images(str(tmp_path / "photos"), str(packed), shard_size=4)
    assert [Path(u).name for u in uris] == ["part-00000.parquet", "part-00001.parquet"]

    # another folder into the same DEST: its part-00000 would be skipped as "already there"
    make_image_folder(tmp_path / "other", bad=False)
    before = {p.name: p.stat().st_mtime_ns for p in packed.iterdir()}
    with pytest.raises(SourceError, match="not of this SOURCE"):
        pack_images(str(tmp_path / "other"), str(packed), shard_size=4)
    assert {p.name: p.stat().st_mtime_ns for p in packed.iterdir()} == before

    # an interrupted pack, then a file that sorts first is added: the re-run writes the lost
    # shard with its old files, and the new file as a shard of its own (none packed twice)
    (packed / "part-00001.parquet").unlink()
    (tmp_path / "photos" / "aaa.jpg").write_bytes(files["colour/coffee.jpg"])
    uris = pack_images(str(tmp_path / "photos"), str(packed), shard_size=4)
    ids = [pq.read_table(u)["id"].to_pylist() for u in uris]
    assert ids[2] == ["aaa.jpg"]
    assert sorted(i for shard in ids for i in shard) == sorted([*files, "aaa.jpg"])

"""One archive, one model: DEST/_manifest.json, refusal of other settings, --recolorize; and
damaged metadata that never costs the pixels, end to end (real local Ray, Prefect's engine,
real files; one DEST through every step, as a nightly deployment would see it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

import models
from flows import cli
from flows.colorize import ConfigError, colorize_archive
from pipeline.archive import manifest as dest_manifest
from pipeline.archive.manifest import MANIFEST, SourceChanged
from pipeline.archive.pack import pack_images
from pipeline.archive.shards import SourceError, list_shards
from pipeline.colorize.worker import model_id
from tests.archive_helpers import (
    jpeg_with_empty_iptc,
    make_image_folder,
    png_with_junk_exif,
    read_output,
)
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture

pytestmark = pytest.mark.slow


def _model(path: Path, seed: int, **options: float) -> str:
    torch.manual_seed(seed)
    models.save(models.build("small", **options), path)
    return str(path)


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_one_dest_one_model_refuse_then_recolorize(tmp_path: Path, ray_local, capsys):  # noqa: F811
    old_model = _model(tmp_path / "old.safetensors", 1)
    new_model = _model(tmp_path / "new.safetensors", 2)
    old_id, new_id = model_id(old_model), model_id(new_model)
    assert old_id != new_id
    photos, dest = tmp_path / "photos", tmp_path / "dest"
    files = make_image_folder(photos, bad=False)  # 6 real images
    (photos / "meta").mkdir()
    (photos / "meta/empty_iptc.jpg").write_bytes(jpeg_with_empty_iptc(data.astronaut()))
    (photos / "meta/junk_exif.png").write_bytes(png_with_junk_exif(data.coffee()))
    ids = {*files, "meta/empty_iptc.jpg", "meta/junk_exif.png"}

    # 1. the first run writes the manifest; damaged metadata is dropped, counted and reported
    with capsys.disabled():  # Prefect's server, started here, logs to the real stderr
        first = colorize_archive(str(photos), str(dest), model=old_model, shard_size=4)
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["settings"] == {
        "model": old_id,
        "temperature": 0.38,
        "format": "jpeg",
        "quality": 95,
        "precision": "fp32",
        "metrics_max_side": 512,
    }
    assert manifest["code_version"]
    rows = read_output(dest)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert first["metadata_dropped"] == {"exif": 1}
    report_md = (dest / "report.md").read_text()
    assert "## Metadata dropped" in report_md and "| exif | 1 |" in report_md
    assert first["models"] == {old_id: {"shards": 2, "images": len(ids)}}
    assert report_md.count("- made by:") == 1 and old_id in report_md
    stats = [json.loads(p.read_text()) for p in (dest / "_stats").glob("*.json")]
    assert {s["settings"] for s in stats} == {manifest["settings_hash"]}
    assert sum(s["metadata_dropped"].get("exif", 0) for s in stats) == 1

    # 2. two new scans arrive; another model (and format) refuses before writing anything
    Image.fromarray(data.chelsea()).resize((120, 90)).save(photos / "new1.jpg")
    Image.fromarray(data.rocket()).resize((120, 80)).save(photos / "new2.png")
    ids |= {"new1.jpg", "new2.png"}
    before = _listing(dest)
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["colorize", str(photos), str(dest), "--model", new_model, "--format", "png"])
    assert exit_code.value.code != 0
    message = capsys.readouterr().err
    assert old_id in message and new_id in message
    assert "--format: jpeg (DEST) -> png (this run)" in message
    assert "DEST's settings" in message and "new DEST" in message and "--recolorize" in message
    with pytest.raises(ConfigError, match=r"--temperature: 0\.38 \(DEST\) -> 0\.5"):
        colorize_archive(str(photos), str(dest), model=old_model, temperature=0.5)
    assert _listing(dest) == before  # no new file, nothing changed

    # 3. the same settings again: committed shards are left alone, the new scans are added
    again = colorize_archive(str(photos), str(dest), model=old_model, shard_size=4)
    assert again["shards"]["done"] == 1 and again["shards"]["skipped"] == 2
    for name in ("files-00000", "files-00001"):
        path = f"_stats/{name}.json"
        assert _listing(dest)[path] == before[path]
    old_stats = (dest / "_stats/files-00000.json").read_bytes()

    # 4. --recolorize: every shard redone by the new model, every id once, one model reported
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["colorize", str(photos), str(dest), "--model", new_model, "--recolorize"])
    assert exit_code.value.code == 0, capsys.readouterr().err[-3000:]
    rows = read_output(dest)
    assert sorted(r["id"] for r in rows) == sorted(ids)  # every id exactly once
    assert {r["model"] for r in rows} == {new_id}
    assert all(r["status"] == "ok" for r in rows)
    report = json.loads((dest / "report.json").read_text())
    assert report["models"] == {new_id: {"shards": 3, "images": len(ids)}}
    assert report["settings"]["model"] == new_id
    report_md = (dest / "report.md").read_text()
    assert report_md.count("- made by:") == 1 and old_id not in report_md
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["settings"]["model"] == new_id and not manifest["adopted"]
    assert f"made by: {new_id}" in capsys.readouterr().out

    # 5. a recolorize stopped part way resumes: a shard still committed with the old settings
    # (its old stats file back in place) is redone by a plain rerun; the others are skipped
    (dest / "_stats/files-00000.json").write_bytes(old_stats)
    resumed = colorize_archive(str(photos), str(dest), model=new_model)
    assert resumed["shards"]["done"] == 1 and resumed["shards"]["skipped"] == 2
    assert resumed["models"] == {new_id: {"shards": 3, "images": len(ids)}}
    # and a rerun with the same settings is a no-op
    noop = colorize_archive(str(photos), str(dest), model=new_model)
    assert noop["shards"]["done"] == 0 and noop["shards"]["skipped"] == 3


def test_older_dest_without_manifest_is_adopted_or_refused(tmp_path: Path, ray_local):  # noqa: F811
    model_a = _model(tmp_path / "a.safetensors", 3)
    model_b = _model(tmp_path / "b.safetensors", 4)
    photos, dest = tmp_path / "photos", tmp_path / "dest"
    files = make_image_folder(photos, bad=False)
    colorize_archive(str(photos), str(dest), model=model_a, shard_size=4)
    # as an older version left it: no manifest, stats files without a settings hash
    (dest / MANIFEST).unlink()
    for path in (dest / "_stats").glob("*.json"):
        doc = json.loads(path.read_text())
        del doc["settings"]
        path.write_text(json.dumps(doc))
    legacy = shutil.copytree(dest, tmp_path / "legacy")
    before = _listing(dest)
    with pytest.raises(ConfigError, match=r"no _manifest\.json.*a\.safetensors@"):
        colorize_archive(str(photos), str(dest), model=model_b)
    assert _listing(dest) == before
    # the model that made it: adopted, nothing redone
    adopted = colorize_archive(str(photos), str(legacy), model=model_a)
    assert adopted["shards"]["done"] == 0 and adopted["shards"]["skipped"] == 2
    manifest = json.loads((legacy / MANIFEST).read_text())
    assert manifest["adopted"] and manifest["settings"]["model"] == model_id(model_a)
    assert len(read_output(legacy)) == len(files)


def _forget_sources(dest: Path) -> None:
    """DEST's manifest as a version before sources left it."""
    doc = json.loads((dest / MANIFEST).read_text())
    del doc["sources"]
    (dest / MANIFEST).write_text(json.dumps(doc))


def test_dest_records_its_source_and_an_older_one_adopts_only_its_own(tmp_path: Path, ray_local):  # noqa: F811
    """The manifest records SOURCE normalised, and the temperature in effect: with none given,
    the model's own. A manifest from before sources takes the run's SOURCE, unless DEST's
    frozen listing (a folder source) or its committed shards (Parquet) are another's: then it
    refuses, naming both, and writes nothing."""
    model = _model(tmp_path / "cool.safetensors", 5, temperature=0.25)
    folder_a, folder_b = tmp_path / "photos-a", tmp_path / "photos-b"
    make_image_folder(folder_a, bad=False)  # 6 images: 2 shards of 4
    make_image_folder(folder_b, bad=False)
    dest = tmp_path / "dest"
    colorize_archive(f"{folder_a}/", str(dest), model=model, shard_size=4)  # a trailing slash
    doc = json.loads((dest / MANIFEST).read_text())
    assert doc["sources"] == [{"uri": str(folder_a), "namespace": ""}]
    assert doc["settings"]["temperature"] == 0.25  # the model's own (no --temperature)

    _forget_sources(dest)
    before = _listing(dest)
    with pytest.raises(ConfigError, match=rf"freezes the files of {folder_a}, not .* {folder_b}"):
        colorize_archive(str(folder_b), str(dest), model=model)
    assert _listing(dest) == before
    adopted = colorize_archive(str(folder_a), str(dest), model=model)
    assert adopted["shards"]["done"] == 0 and adopted["shards"]["skipped"] == 2
    assert json.loads((dest / MANIFEST).read_text())["sources"][0]["uri"] == str(folder_a)

    # Parquet: every packed archive has a part-00000; its committed stats say whose it is
    packed_a, packed_b, packed_dest = tmp_path / "packed-a", tmp_path / "packed-b", tmp_path / "d2"
    pack_images(str(folder_a), str(packed_a))
    pack_images(str(folder_b), str(packed_b))
    colorize_archive(str(packed_a), str(packed_dest), model=model)
    _forget_sources(packed_dest)
    before = _listing(packed_dest)
    with pytest.raises(ConfigError, match=r"shard part-00000 was made from .*packed-a/part-0"):
        colorize_archive(str(packed_b), str(packed_dest), model=model)
    assert _listing(packed_dest) == before


def test_an_added_source_gets_a_namespace_and_no_overlap(tmp_path: Path):
    """--add-source, before any run: the namespace is stable and readable, the listing of an
    added folder is its own, and a source inside another of DEST's is refused."""
    first = {"settings": {}, "sources": [{"uri": "/data/scans", "namespace": ""}]}
    with pytest.raises(SourceChanged, match="SOURCE of DEST: /data/scans") as refused:
        dest_manifest.admit_source("D", first, "/data/other", add_source=False)
    assert "--add-source" in str(refused.value) and "new DEST" in str(refused.value)
    doc, namespace, changed = dest_manifest.admit_source("D", first, "/data/other", True)
    assert changed and namespace == dest_manifest.namespace_of("/data/other")
    assert namespace.startswith("other-") and len(namespace) == len("other-") + 8
    assert doc["sources"][1] == {"uri": "/data/other", "namespace": namespace}
    assert dest_manifest.admit_source("D", doc, "/data/other", False)[1:] == (namespace, False)
    for inside in ("/data/scans/1950", "/data"):
        with pytest.raises(SourceChanged, match="one is inside the other"):
            dest_manifest.admit_source("D", first, inside, add_source=True)

    folder_a, folder_b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    make_image_folder(folder_a, bad=False)
    make_image_folder(folder_b, bad=False)
    list_shards(str(folder_a), str(dest), 4)
    added = list_shards(str(folder_b), str(dest), 4, namespace="b-12345678")
    assert [s.name for s in added] == ["b-12345678/files-00000", "b-12345678/files-00001"]
    assert (dest / "b-12345678" / "_listing.json").is_file()
    with pytest.raises(SourceError, match="freezes the files of"):
        list_shards(str(folder_b), str(dest), 4)  # into the first's listing: never

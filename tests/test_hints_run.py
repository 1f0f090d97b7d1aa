"""`colorize --hints FILE` (issue 30), end to end on real photos with the shipped hint-aware
model, real Ray, Prefect's engine, real folders, Parquet and a real S3 server on loopback:
the hinted ids' output moves to their hints' colours at the points, only the shards holding
them are rewritten (each id once), a second identical run writes nothing, DEST keeps the
hints for later runs, and a bad file, an unknown id or a model without hints is refused
before anything is written."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from skimage import color, data

import models
from flows import cli
from flows.colorize import ConfigError, colorize_archive
from pipeline.archive import hint_record, storage
from pipeline.archive.hint_record import HINTS
from pipeline.archive.shards import ColumnNames, list_shards, read_batches, shard_ids
from pipeline.colorize.hints import batch_planes, loads
from pipeline.colorize.predict import predict_low, working_batch
from tests.archive_helpers import jpeg, read_output
from tests.test_archive import ray_local, small_model  # noqa: F401 - shared fixtures
from tests.test_s3 import bucket  # noqa: F401 - a bucket on the loopback S3 server

pytestmark = pytest.mark.slow
HINT_MODEL = str(models.DEFAULT_MODEL)  # the shipped default is hint-aware
PHOTOS = {"astronaut.jpg": data.astronaut(), "coffee.jpg": data.coffee(),
          "chelsea.jpg": data.chelsea()}  # fmt: skip


def hint_colour(rgb: np.ndarray, x: float, y: float, a: float, b: float) -> str:
    """'#rrggbb' of ab (a, b) at the photo's own L at (x, y): a colour the output, which keeps
    the scan's L, can show there (in the sRGB gamut at that L)."""
    h, w = rgb.shape[:2]
    lightness = color.rgb2lab(rgb[int(y * h), int(x * w)][None, None])[0, 0, 0]
    out = color.lab2rgb(np.array([[[lightness, a, b]]]))[0, 0]
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in out)


# two points on the coffee photo with colours it does not have there: a blue and a green
HINTS_DOC = {"coffee.jpg": [
    {"x": 0.7, "y": 0.3, "rgb": hint_colour(data.coffee(), 0.7, 0.3, 5.0, -35.0), "r": 0.05},
    {"x": 0.7, "y": 0.7, "rgb": hint_colour(data.coffee(), 0.7, 0.7, -35.0, 25.0), "r": 0.05},
]}  # fmt: skip


def photo_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, rgb in PHOTOS.items():
        (root / name).write_bytes(jpeg(rgb, 256))
    return root


def ab_at(dest: Path, row_id: str, x: float, y: float) -> np.ndarray:
    """The output image's ab at (x, y) (shares of width and height), 5x5 mean."""
    for path in sorted(dest.glob("*.parquet")):
        table = pq.read_table(path).to_pylist()
        for row in table:
            if row["id"] == row_id:
                rgb = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
                lab = color.rgb2lab(rgb)
                h, w = rgb.shape[:2]
                cy, cx = int(y * h), int(x * w)
                return lab[cy - 2 : cy + 3, cx - 2 : cx + 3, 1:].reshape(-1, 2).mean(0)
    raise KeyError(row_id)


def hex_ab(rgb: str) -> np.ndarray:
    value = np.array([[[int(rgb[i : i + 2], 16) for i in (1, 3, 5)]]], np.uint8)
    return color.rgb2lab(value)[0, 0, 1:]


def snapshot(dest: Path) -> dict[str, bytes]:
    """Every file under DEST but the run's report files, by relative path."""
    skip = {"report.json", "report.md", "metrics.png", "contact_sheet.png"}
    return {
        str(p.relative_to(dest)): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file() and p.name not in skip and "gallery" not in p.parts
    }


def tree(dest: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every path under DEST, each file's bytes and mtime (None for a folder)."""
    return {
        str(p.relative_to(dest)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(dest.rglob("*"))
    }


def run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_code:
        cli.main(list(argv))
    captured = capsys.readouterr()
    return int(exit_code.value.code or 0), captured.out + captured.err


def test_hints_recolorize_only_their_shards_with_their_colours(tmp_path, capsys, ray_local):  # noqa: F811
    src, dest = photo_folder(tmp_path / "src"), tmp_path / "dest"
    common = ["--model", HINT_MODEL, "--shard-size", "1"]  # one photo a shard: 3 shards
    code, _ = run(capsys, "colorize", str(src), str(dest), *common)
    assert code == 0
    before = snapshot(dest)
    automatic = [ab_at(dest, "coffee.jpg", p["x"], p["y"]) for p in HINTS_DOC["coffee.jpg"]]

    # one other shard not committed (a stopped run): --hints does not do it either
    chelsea_shard = next(r["_shard"] for r in read_output(dest) if r["id"] == "chelsea.jpg")
    (dest / "_stats" / f"{chelsea_shard}.json").unlink()
    before = snapshot(dest)
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps(HINTS_DOC))
    code, out = run(capsys, "colorize", str(src), str(dest), *common, "--hints", str(hints))
    assert code == 0, out
    assert not (dest / "_stats" / f"{chelsea_shard}.json").exists()
    after = snapshot(dest)
    # the coffee's shard (and only it) was rewritten: its output, stats and previews
    changed = {k for k in after if before.get(k) != after[k]}
    coffee_shard = next(r["_shard"] for r in read_output(dest) if r["id"] == "coffee.jpg")
    assert f"{coffee_shard}.parquet" in changed and f"_stats/{coffee_shard}.json" in changed
    others = [r["_shard"] for r in read_output(dest) if r["id"] != "coffee.jpg"]
    assert not any(name in k for name in others for k in changed), changed
    assert changed - {HINTS} <= {k for k in changed if coffee_shard in k}
    # each id once, the hinted row says so
    rows = read_output(dest)
    assert sorted(r["id"] for r in rows) == sorted(PHOTOS)
    assert {r["id"]: r["hints"] for r in rows} == {"astronaut.jpg": 0, "coffee.jpg": 2,
                                                   "chelsea.jpg": 0}  # fmt: skip
    # the colours at the points moved to the hints'
    for point, was in zip(HINTS_DOC["coffee.jpg"], automatic, strict=True):
        now, want = ab_at(dest, "coffee.jpg", point["x"], point["y"]), hex_ab(point["rgb"])
        assert np.linalg.norm(now - want) < 15, (point, now, want)
        assert np.linalg.norm(now - want) < np.linalg.norm(was - want) - 10, (point, was, now)
    # DEST keeps the hints; the report counts the hinted image
    assert json.loads((dest / HINTS).read_text())["hints"] == HINTS_DOC
    assert json.loads((dest / "report.json").read_text())["hinted"] == 1

    # the --hints run stopped before the coffee's shard committed (DEST keeps the hints, the
    # shard its automatic output and stats): a plain run redoes it with the hints kept, and
    # does the shard left undone; then the same file again and a plain run: nothing to do,
    # nothing written
    for name in (f"{coffee_shard}.parquet", f"_stats/{coffee_shard}.json"):
        (dest / name).write_bytes(before[name])
    code, _ = run(capsys, "colorize", str(src), str(dest), *common)
    assert code == 0 and (dest / "_stats" / f"{chelsea_shard}.json").exists()
    assert {r["id"]: r["hints"] for r in read_output(dest)}["coffee.jpg"] == 2
    for point in HINTS_DOC["coffee.jpg"]:
        now, want = ab_at(dest, "coffee.jpg", point["x"], point["y"]), hex_ab(point["rgb"])
        assert np.linalg.norm(now - want) < 15, (point, now, want)
    after = snapshot(dest)
    for extra in (["--hints", str(hints)], []):
        code, out = run(capsys, "colorize", str(src), str(dest), *common, *extra)
        assert code == 0, out
        assert snapshot(dest) == after

    # an id given no points drops its hints: its shard is made again without them
    hints.write_text(json.dumps({"coffee.jpg": []}))
    code, _ = run(capsys, "colorize", str(src), str(dest), *common, "--hints", str(hints))
    assert code == 0
    assert json.loads((dest / HINTS).read_text())["hints"] == {}
    assert {r["id"]: r["hints"] for r in read_output(dest)}["coffee.jpg"] == 0
    np.testing.assert_allclose(ab_at(dest, "coffee.jpg", 0.7, 0.3), automatic[0], atol=1.0)


GOOD_POINT = {"x": 0.5, "y": 0.5, "rgb": "#204080"}
BAD_FILES = [  # (the file's text, what the refusal says)
    ("{not json", "hints file: not JSON"),
    (json.dumps([GOOD_POINT]), "hints file: expected an object"),
    (json.dumps({"coffee.jpg": GOOD_POINT}), "id 'coffee.jpg': expected a list of points"),
    (json.dumps({"coffee.jpg": [GOOD_POINT], "tea.jpg": [GOOD_POINT]}),
     "1 id\\(s\\) of the hints file are not in SOURCE: 'tea.jpg'"),
    (json.dumps({"coffee.jpg": [{**GOOD_POINT, "x": 1.5}]}),
     "id 'coffee.jpg', point 0: x must .* outside the image"),
    (json.dumps({"chelsea.jpg": [GOOD_POINT, {**GOOD_POINT, "y": -0.1}]}),
     "id 'chelsea.jpg', point 1: y must .* outside the image"),
    (json.dumps({"coffee.jpg": [{**GOOD_POINT, "rgb": "blue"}]}),
     "id 'coffee.jpg', point 0: rgb must be an sRGB colour"),
    (json.dumps({"coffee.jpg": [{**GOOD_POINT, "rgb": "#12345g"}]}),
     "id 'coffee.jpg', point 0: rgb must be an sRGB colour"),
    (json.dumps({"coffee.jpg": [{**GOOD_POINT, "r": 0}]}),
     "id 'coffee.jpg', point 0: r must be a share of the short side"),
]  # fmt: skip


def test_a_bad_hints_file_or_model_is_refused_before_anything_is_written(
    tmp_path,
    capsys,
    ray_local,  # noqa: F811
    small_model,  # noqa: F811
):
    src, dest = photo_folder(tmp_path / "src"), tmp_path / "dest"
    common = ["--model", HINT_MODEL, "--shard-size", "1"]
    code, _ = run(capsys, "colorize", str(src), str(dest), *common)
    assert code == 0
    # a new photo in SOURCE: a run that went on would list it in DEST (its frozen listing)
    (src / "rocket.jpg").write_bytes(jpeg(data.rocket(), 256))
    before = tree(dest)
    hints = tmp_path / "hints.json"
    for text, message in BAD_FILES:
        hints.write_text(text)
        code, out = run(capsys, "colorize", str(src), str(dest), *common, "--hints", str(hints))
        assert code == 2, (text, out)
        assert re.search(message, out), (message, out)
        assert tree(dest) == before, text
    # a good file, a model that takes no hints: the same refusal, saying what to use
    hints.write_text(json.dumps(HINTS_DOC))
    code, out = run(capsys, "colorize", str(src), str(dest), "--model", small_model,
                    "--shard-size", "1", "--hints", str(hints))  # fmt: skip
    assert code == 2, out
    assert "takes no colour hints; use a hint-aware model" in out
    assert tree(dest) == before


def test_a_model_without_hints_is_refused(tmp_path, small_model):  # noqa: F811
    src, dest = photo_folder(tmp_path / "src"), tmp_path / "dest"
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps(HINTS_DOC))
    with pytest.raises(ConfigError, match="takes no colour hints; use a hint-aware model"):
        colorize_archive.fn(str(src), str(dest), model=small_model, hints=str(hints))
    assert not dest.exists()


def test_hints_on_s3(tmp_path, bucket, s3_server, ray_local):  # noqa: F811
    for name, rgb in PHOTOS.items():
        storage.write_bytes(f"s3://{bucket}/scans/{name}", jpeg(rgb, 128))
    storage.write_bytes(f"s3://{bucket}/hints.json", json.dumps(HINTS_DOC).encode())
    dest = f"s3://{bucket}/out"
    options = {"model": HINT_MODEL, "shard_size": 1, "s3_endpoint_url": s3_server}
    colorize_archive(f"s3://{bucket}/scans", dest, **options)
    result = colorize_archive(f"s3://{bucket}/scans", dest, hints=f"s3://{bucket}/hints.json",
                              **options)  # fmt: skip
    assert result["shards"]["done"] == 1 and result["shards"]["skipped"] == 2
    assert json.loads(storage.read_bytes(f"{dest}/{HINTS}"))["hints"] == HINTS_DOC
    again = colorize_archive(f"s3://{bucket}/scans", dest, hints=f"s3://{bucket}/hints.json",
                             **options)  # fmt: skip
    assert again["shards"]["done"] == 0
    # --recolorize (another temperature) redoes every shard, the hinted one with its hints
    redo = colorize_archive(f"s3://{bucket}/scans", dest, recolorize=True,
                            **{**options, "temperature": 0.3})  # fmt: skip
    assert redo["shards"]["done"] == 3 and redo["hinted"] == 1
    fs, _ = storage.arrow_fs(dest)
    parts = [u.removeprefix("s3://") for u in storage.list_files(dest) if u.endswith(".parquet")]
    rows = pq.read_table(parts, filesystem=fs, columns=["id", "hints"]).to_pylist()
    assert sorted((r["id"], r["hints"]) for r in rows) == [
        ("astronaut.jpg", 0), ("chelsea.jpg", 0), ("coffee.jpg", 2)]  # fmt: skip


def test_the_hints_in_effect_merge_and_hash(tmp_path):
    """A file's ids replace theirs, [] drops them; DEST's record round-trips; a shard's hash
    is the manifest's without hints, and follows its ids' points (not their key order)."""
    a, b = {"x": 0.1, "y": 0.2, "rgb": "#102030"}, {"x": 0.5, "y": 0.5, "rgb": "#ff0000", "r": 0.1}
    kept = {"p.jpg": [a], "q.jpg": [a, b]}
    assert hint_record.merged(kept, {"q.jpg": [b], "s.jpg": [a]}) == {
        "p.jpg": [a], "q.jpg": [b], "s.jpg": [a]}  # fmt: skip
    assert hint_record.merged(kept, {"p.jpg": []}) == {"q.jpg": [a, b]}
    dest = str(tmp_path / "dest")
    assert hint_record.read(dest) == {}
    hint_record.write(dest, kept)
    assert hint_record.read(dest) == kept
    assert hint_record.of_ids(kept, ["q.jpg", "r.jpg"]) == {"q.jpg": [a, b]}
    settings = {"model": "m", "temperature": 0.2}
    digest = hint_record.shard_settings_hash
    assert digest(settings, "manifest", {}) == "manifest"
    shard_hints = ({"p.jpg": [a]}, {"p.jpg": [b]}, {"q.jpg": [a]}, {"p.jpg": [a, a]})
    hashes = {digest(settings, "manifest", h) for h in shard_hints}
    assert len(hashes) == 4 and "manifest" not in hashes
    reordered = {"p.jpg": [{"rgb": "#102030", "y": 0.2, "x": 0.1}]}
    assert digest(settings, "manifest", reordered) == digest(settings, "manifest", {"p.jpg": [a]})


@pytest.mark.parametrize("with_id", [True, False])
@pytest.mark.parametrize("namespace", ["", "more"])
def test_shard_ids_are_the_ids_its_rows_get(tmp_path, with_id, namespace):
    """The flow finds a hinted id's shard by `shard_ids`; the worker names rows by
    `read_batches`: the same ids, Parquet (with an id column or without) or files."""
    parquet, files = tmp_path / "parquet", photo_folder(tmp_path / "files")
    parquet.mkdir()
    image = jpeg(data.coffee(), 32)
    columns = {
        "image": [image] * 5,
        **({"id": [f"a/{i}.jpg" for i in range(5)]} if with_id else {}),
    }
    pq.write_table(pa.table(columns), parquet / "part-0.parquet", row_group_size=2)
    names = ColumnNames("image", "id")
    for source in (parquet, files):
        for shard in list_shards(str(source), str(tmp_path / "dest"), 2, namespace):
            read = [i for batch in read_batches(shard, names, 2) for i in batch.ids]
            assert shard_ids(shard, names) == read and len(read) == len(set(read)) > 0


def test_the_network_itself_takes_the_hints(small_model):  # noqa: F811
    """`predict_low` gives each image's hint planes to the network (its logits), not only to
    the blend after decoding; no hints, or empty lists, is the automatic forward exactly; a
    model that takes none refuses them."""
    model = models.load(HINT_MODEL)
    lightness = [color.rgb2lab(data.coffee()[::2, ::2])[..., 0].astype(np.float32)]
    hints = [loads(json.dumps(HINTS_DOC))["coffee.jpg"]]
    automatic, _ = predict_low(model, lightness)
    assert torch.equal(predict_low(model, lightness, hints=[[]])[0], automatic)
    hinted, _ = predict_low(model, lightness, hints=hints)
    grid = model.working_size // 4
    for hint in hints[0]:  # on its cell, the hint's colour
        cell = hinted[0, :, int(hint.y * grid), int(hint.x * grid)]
        assert torch.allclose(cell, torch.tensor([hint.a, hint.b]), atol=3.0), (hint, cell)
    batch = working_batch(lightness, model.working_size, model.device)
    blend_only = model.with_hints(automatic, batch_planes(hints, grid, grid, model.device), batch)
    assert float((hinted - blend_only).norm(dim=1).max()) > 5
    plain = models.load(small_model)
    assert torch.equal(
        predict_low(plain, lightness, hints=[[]])[0], predict_low(plain, lightness)[0]
    )
    with pytest.raises(ValueError, match="takes no colour hints"):
        predict_low(plain, lightness, hints=hints)

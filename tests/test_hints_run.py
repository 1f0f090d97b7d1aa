"""`colorize --hints FILE` (issue 30), end to end on real photos with the shipped hint-aware
model, real Ray, Prefect's engine, real folders, Parquet and a real S3 server on loopback:
the hinted ids' output moves to their hints' colours at the points, only the shards holding
them are rewritten (each id once), a second identical run writes nothing, DEST keeps the
hints for later runs, and a bad file, an unknown id or a model without hints is refused
before anything is written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import color, data

import models
from flows import cli
from flows.colorize import ConfigError, colorize_archive
from pipeline.archive import storage
from pipeline.archive.hint_record import HINTS
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

    # a plain run does the shard left undone, with the hints kept; then the same file again
    # and a plain run: nothing to do, nothing written
    code, _ = run(capsys, "colorize", str(src), str(dest), *common)
    assert code == 0 and (dest / "_stats" / f"{chelsea_shard}.json").exists()
    assert {r["id"]: r["hints"] for r in read_output(dest)}["coffee.jpg"] == 2
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


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tea.jpg": [{"x": 0.5, "y": 0.5, "rgb": "#ffffff"}]},
         "1 id\\(s\\) of the hints file are not in SOURCE: 'tea.jpg'"),
        ({"coffee.jpg": [{"x": 1.5, "y": 0.5, "rgb": "#ffffff"}]},
         "id 'coffee.jpg', point 0: x must .* outside the image"),
        ({"coffee.jpg": [{"x": 0.5, "y": 0.5, "rgb": "blue"}]},
         "id 'coffee.jpg', point 0: rgb must be an sRGB colour"),
    ],
)  # fmt: skip
def test_a_bad_hints_file_is_refused_before_anything_is_written(
    tmp_path,
    capsys,
    ray_local,  # noqa: F811
    document,
    message,
):
    src, dest = photo_folder(tmp_path / "src"), tmp_path / "dest"
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps(document))
    code, out = run(capsys, "colorize", str(src), str(dest), "--model", HINT_MODEL,
                    "--hints", str(hints))  # fmt: skip
    assert code == 2
    assert __import__("re").search(message, out), out
    assert not dest.exists()


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

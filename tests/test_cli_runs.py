"""The colorize command line end to end on a tiny archive: a shard that fails every attempt
(its entry in the result, the report and the exit status), the options that change the
output (--format, --quality, --temperature, --metrics-max-side, --max-attempts), and two
packed archives into one DEST (--add-source)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

import models
from flows import cli
from pipeline.archive.manifest import MANIFEST, namespace_of
from pipeline.imaging.images import decode_image
from pipeline.imaging.metrics import downscale, psnr, unit_float
from tests.archive_helpers import jpeg, read_output
from tests.test_archive import ray_local, small_model  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.slow
BROKEN = "part-00001"  # a Parquet shard that cannot be read: every attempt raises


def _archive(root: Path) -> dict[str, bytes]:
    """One good shard of two colour photos (96 px), then one corrupt Parquet file."""
    root.mkdir()
    photos = {"coffee": jpeg(data.coffee(), 96), "astronaut": jpeg(data.astronaut(), 96)}
    pq.write_table(
        pa.table({"id": list(photos), "image": list(photos.values())}), root / "part-00000.parquet"
    )
    good = (root / "part-00000.parquet").read_bytes()
    (root / f"{BROKEN}.parquet").write_bytes(good[: len(good) // 2])  # cut short: unreadable
    return photos


def _colorize(capsys, src: Path, dest: Path, model: str, *options: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["colorize", str(src), str(dest), "--model", model, *options])
    return int(exit_code.value.code or 0), capsys.readouterr().out


def _failed(dest: Path) -> list[dict]:
    return json.loads((dest / "report.json").read_text())["shards"]["failed"]


def test_failing_shard_and_options_from_the_command_line(tmp_path, capsys, ray_local, small_model):  # noqa: F811
    photos = _archive(tmp_path / "src")
    src, png_dest, jpeg_dest = tmp_path / "src", tmp_path / "png", tmp_path / "jpeg"

    code, printed = _colorize(capsys, src, png_dest, small_model, "--format", "png",
                              "--temperature", "1.0", "--metrics-max-side", "32",
                              "--max-attempts", "2")  # fmt: skip
    # the failure path: the corrupt shard in the report (with its attempts), a non-zero exit
    assert code == 1, printed
    assert "1 done, 0 skipped, 1 failed" in printed
    [failed] = _failed(png_dest)
    assert failed["shard"] == BROKEN and failed["attempts"] == 2  # --max-attempts 2
    assert "ArrowInvalid" in failed["error"] or "arquet" in failed["error"], failed  # why
    assert f"| {BROKEN} |" in (png_dest / "report.md").read_text()
    assert not (png_dest / "_stats" / f"{BROKEN}.json").exists()
    png_rows = {r["id"]: r for r in read_output(png_dest)}
    assert set(png_rows) == set(photos) and all(r["status"] == "ok" for r in png_rows.values())

    code, printed = _colorize(capsys, src, jpeg_dest, small_model, "--quality", "30",
                              "--temperature", "0.05")  # fmt: skip
    assert code == 1 and _failed(jpeg_dest)[0]["attempts"] == 3  # the default --max-attempts
    jpeg_rows = {r["id"]: r for r in read_output(jpeg_dest)}

    images = {
        name: {p.stem: pq.read_table(p).to_pydict() for p in dest.glob("part-*.parquet")}
        for name, dest in (("png", png_dest), ("jpeg", jpeg_dest))
    }
    # Pillow's quantization tables for quality 30 (4:2:0, as the encoder picks below 90)
    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, "JPEG", quality=30, subsampling=2)
    q30 = Image.open(buf).quantization
    for name in photos:
        png_table = images["png"]["part-00000"]
        jpeg_table = images["jpeg"]["part-00000"]
        as_png = Image.open(io.BytesIO(png_table["image"][png_table["id"].index(name)]))
        as_jpeg = Image.open(io.BytesIO(jpeg_table["image"][jpeg_table["id"].index(name)]))
        assert as_png.format == "PNG" and as_jpeg.format == "JPEG"  # --format png
        assert as_jpeg.quantization == q30  # --quality 30
        # --metrics-max-side 32: PSNR scored on a 32-px copy of the PNG's (lossless) pixels
        pixels = np.asarray(as_png.convert("RGB"))
        truth = decode_image(photos[name]).rgb
        assert truth is not None and max(pixels.shape[:2]) == 96
        small_pred, small_true = downscale(32, pixels, truth)
        assert png_rows[name]["psnr"] == pytest.approx(psnr(small_pred, small_true), rel=1e-5)
        full = psnr(unit_float(pixels), truth)
        assert abs(png_rows[name]["psnr"] - full) > 1e-3, full
        # --temperature: a colder annealed mean is nearer the mode, so more colourful
        assert jpeg_rows[name]["colorfulness"] > png_rows[name]["colorfulness"] + 1.0, name


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_code:
        cli.main(list(argv))
    printed = capsys.readouterr()
    return int(exit_code.value.code or 0), printed.out, printed.err


def _files(root: Path) -> dict[str, int]:
    """Every file under root with its modification time."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}  # fmt: skip


def _committed(dest: Path) -> dict[str, int]:
    """DEST's output shards and stats files with their modification times."""
    files = _files(dest).items()
    return {k: v for k, v in files if k.endswith(".parquet") or k.startswith("_stats/")}


def test_two_packed_archives_into_one_dest(tmp_path, capsys, ray_local):  # noqa: F811
    """Two packed archives, each a part-00000.parquet: the second into the first's DEST refuses
    (exit 2, both sources named, nothing written); with --add-source it joins DEST in its own
    namespace, an id both archives have kept apart; then either again is a no-op, and report,
    gallery and export see all four images. No --temperature: the model's own (not 0.38)."""
    model = str(tmp_path / "warm.safetensors")
    models.save(models.build("small", temperature=0.6), model)
    photos = {
        "photos-1": {"a.jpg": data.coffee(), "b.jpg": data.astronaut()},
        "photos-2": {"a.jpg": data.chelsea(), "c.jpg": data.rocket()},  # a.jpg in both
    }
    for folder, files in photos.items():
        (tmp_path / folder).mkdir()
        for name, array in files.items():
            (tmp_path / folder / name).write_bytes(jpeg(array, 96))
    p1, p2, dest = tmp_path / "p1", tmp_path / "p2", tmp_path / "D"
    for folder, packed in (("photos-1", p1), ("photos-2", p2)):
        assert _main(capsys, "pack", str(tmp_path / folder), str(packed))[0] == 0
        assert sorted(p.name for p in packed.iterdir()) == ["_pack.json", "part-00000.parquet"]

    code, out, _ = _main(capsys, "colorize", str(p1), str(dest), "--model", model)
    assert code == 0 and "shards: 1 done, 0 skipped, 0 failed" in out, out
    before = _files(dest)
    code, out, err = _main(capsys, "colorize", str(p2), str(dest), "--model", model)
    assert code == 2, out + err
    assert f"SOURCE of DEST: {p1}" in err and f"this run's SOURCE: {p2}" in err, err
    assert "Nothing was written" in err and "new DEST" in err and "--add-source" in err
    assert _files(dest) == before

    code, out, err = _main(capsys, "colorize", str(p2) + "/", str(dest), "--model", model,
                           "--add-source")  # fmt: skip
    assert code == 0 and "shards: 1 done, 0 skipped, 0 failed" in out, out + err
    namespace = namespace_of(str(p2))
    assert namespace.startswith("p2-")
    rows = read_output(dest)
    ids = sorted(r["id"] for r in rows)
    assert ids == sorted(["a.jpg", "b.jpg", f"{namespace}/a.jpg", f"{namespace}/c.jpg"])
    assert all(r["status"] == "ok" for r in rows)
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["sources"] == [{"uri": str(p1), "namespace": ""},
                                   {"uri": str(p2), "namespace": namespace}]  # fmt: skip
    assert manifest["settings"]["temperature"] == 0.6  # the model's own

    committed = _committed(dest)
    for packed in (p1, p2):  # a third run of either: nothing to do
        code, out, err = _main(capsys, "colorize", str(packed), str(dest), "--model", model)
        assert code == 0 and "shards: 0 done, 1 skipped, 0 failed" in out, out + err
    assert _committed(dest) == committed and len(committed) == 4
    report = json.loads((dest / "report.json").read_text())
    assert report["images"] == 4 and report["ok"] == 4  # the whole DEST: both sources
    assert (dest / "gallery" / "thumbs" / namespace / "part-00000" / "000000-out.jpg").is_file()
    gallery_pages = (dest / "gallery" / "data").glob("*.js")
    assert f"{namespace}/c.jpg" in "".join(p.read_text() for p in gallery_pages)

    code, out, err = _main(capsys, "export", str(dest), str(tmp_path / "out"))
    assert code == 0, out + err
    exported = sorted(p.relative_to(tmp_path / "out").as_posix()
                      for p in (tmp_path / "out").rglob("*.jpg"))  # fmt: skip
    assert exported == ids

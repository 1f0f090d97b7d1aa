"""The colorize command line end to end on a tiny archive: a shard that fails every attempt
(its entry in the result, the report and the exit status), and the options that change the
output (--format, --quality, --temperature, --metrics-max-side, --max-attempts)."""

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

from flows import cli
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

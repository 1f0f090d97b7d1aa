"""The network's number type (issue 31): bf16 on a CPU that has it, under autocast, keeps the
default model's colours on real photos; a precision the workers cannot run is refused before
anything is written; a bf16 run goes through the flow and its DEST keeps it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from skimage import data

import models
from flows.colorize import ConfigError, colorize_archive
from flows.evaluate import evaluate_model
from pipeline.colorize.predict import check_precision, native_bf16, predict_low
from pipeline.imaging.images import decode_image
from tests.archive_helpers import jpeg, make_image_folder, read_output
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture

needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")


@needs_bf16
def test_bf16_on_this_cpu_runs_the_network_in_bf16_and_keeps_the_colours() -> None:
    """The default model on four real photos, fp32 and bf16: the ab differ (bf16 did run: a
    silent fp32 would give the same numbers) and by little (tolerances: this CPU measured
    p50 0.5, p95 5, p99 14 ab on 32 corpus photos at T 0.2)."""
    model = models.load(models.DEFAULT_MODEL).eval()
    photos = (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())
    lightness = [decode_image(jpeg(photo, 256)).lightness for photo in photos]
    fp32 = predict_low(model, lightness, None, "fp32")[0]
    bf16 = predict_low(model, lightness, None, "bf16")[0]
    assert bf16.dtype == torch.float32  # the decoding stays fp32
    error = (bf16 - fp32).norm(dim=1).flatten()
    p50, p95, p99 = (float(error.quantile(q)) for q in (0.5, 0.95, 0.99))
    assert p50 > 0.01, "bf16 gave fp32's numbers: autocast did not run"
    assert p50 < 2 and p95 < 10 and p99 < 25, (p50, p95, p99)
    chroma = float(bf16.norm(dim=1).mean() / fp32.norm(dim=1).mean())
    assert 0.95 < chroma < 1.05  # as colourful


def test_a_precision_a_device_cannot_run_is_named_with_what_to_use() -> None:
    with pytest.raises(ValueError, match="fp16 runs on CUDA workers only; on a CPU use bf16"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="must be one of fp32, bf16, fp16"):
        check_precision("int4", torch.device("cpu"))
    check_precision("fp16", torch.device("cuda"))  # checked, not run: no GPU here
    check_precision("fp32", torch.device("cpu"))


def test_a_precision_the_workers_cannot_run_is_refused_before_anything_is_written(
    tmp_path,
    ray_local,  # noqa: F811
) -> None:
    make_image_folder(tmp_path / "photos", bad=False)
    with pytest.raises(ConfigError, match="fp16 runs on CUDA workers only"):
        colorize_archive(str(tmp_path / "photos"), str(tmp_path / "dest"), precision="fp16")
    assert not (tmp_path / "dest").exists()
    with pytest.raises(ConfigError, match="fp16 runs on CUDA workers only"):
        evaluate_model(str(tmp_path / "photos"), out=str(tmp_path / "ev"), precision="fp16")
    assert not (tmp_path / "ev").exists()


def levels_apart(tmp_path: Path, precision: str) -> list[float]:
    """Real photos colorized through the flow in fp32 and in `precision` (DESTs tmp_path/fp32
    and tmp_path/<precision>): each image's mean RGB distance between the two, of 255."""
    photos = tmp_path / "photos"
    make_image_folder(photos, bad=False)
    images = {}
    for run in ("fp32", precision):
        dest = tmp_path / run
        colorize_archive(str(photos), str(dest), precision=run, shard_size=8)
        rows = read_output(dest)
        assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
        table = pq.read_table(next(dest.glob("*.parquet")), columns=["id", "image"]).to_pylist()
        images[run] = {
            r["id"]: np.asarray(Image.open(io.BytesIO(r["image"])), np.float32) for r in table
        }
    return [float(np.abs(images[precision][i] - images["fp32"][i]).mean()) for i in images["fp32"]]


@needs_bf16
def test_a_bf16_run_colorizes_in_bf16_and_its_dest_keeps_it(tmp_path, ray_local) -> None:  # noqa: F811
    moved = levels_apart(tmp_path, "bf16")
    assert max(moved) > 0, "the bf16 run's images are fp32's: the worker ignored --precision"
    assert np.mean(moved) < 3  # mean RGB levels apart, of 255
    with pytest.raises(ConfigError, match=r"--precision: bf16 \(DEST\) -> fp32"):
        colorize_archive(str(tmp_path / "photos"), str(tmp_path / "bf16"), precision="fp32")

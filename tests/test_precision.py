"""The network's number type (issue 31): bf16 on a CPU that has it, under autocast, keeps the
default model's colours on real photos; a precision the workers cannot run is refused before
anything is written; a bf16 run goes through the flow and its DEST keeps it; `auto` picks the
fastest within the tolerance for the hardware, and each shard records what ran."""

from __future__ import annotations

import copy
import io
import json
import shutil
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
from pipeline.colorize.int8 import twin_paths
from pipeline.colorize.precision import (
    auto_precision,
    check_precision,
    native_bf16,
    resolve_precision,
    twin_within_tolerance,
)
from pipeline.colorize.predict import predict_low
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


def test_auto_is_the_fastest_precision_within_the_tolerance_for_the_hardware(tmp_path) -> None:
    """`auto`: int8 on a CPU for a model whose int8 twin is within the tolerance (the shipped
    default's card), bf16 where the device has it, else fp32; a twin measured out of the
    tolerance, or not at all, is passed over."""
    assert auto_precision("cpu", True, True) == "int8"
    assert auto_precision("cpu", True, False) == "int8"
    assert auto_precision("cpu", False, True) == "bf16"
    assert auto_precision("cpu", False, False) == "fp32"
    assert auto_precision("cuda", False, True) == "bf16"
    assert auto_precision("cuda", False, False) == "fp32"
    _, card_path = twin_paths(models.DEFAULT_MODEL)
    shipped = json.loads(card_path.read_text())
    assert twin_within_tolerance(shipped)
    pale = copy.deepcopy(shipped)
    pale["evaluate"]["int8_minus_fp32"]["colourfulness_percent_of_truth"] = -3.5
    assert not twin_within_tolerance(pale)
    checked_only = {"check": {"vs_fp32": {"ab_p95": 7.0}}}
    assert twin_within_tolerance(checked_only)
    checked_only["check"]["vs_fp32"]["ab_p95"] = 14.0
    assert not twin_within_tolerance(checked_only)
    assert not twin_within_tolerance({})
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, models.DEFAULT_MODEL) == "int8"
    assert resolve_precision("fp32", cpu, models.DEFAULT_MODEL) == "fp32"  # asked: kept
    mine = tmp_path / "mine.safetensors"  # no twin beside it
    shutil.copy(models.DEFAULT_MODEL, mine)
    assert resolve_precision("auto", cpu, mine) == ("bf16" if native_bf16() else "fp32")


def test_an_auto_run_records_auto_in_dest_and_what_ran_in_each_shard(
    tmp_path,
    ray_local,  # noqa: F811
) -> None:
    """The default in `auto` on this CPU runs its int8 twin: its images are not fp32's, DEST's
    manifest keeps `auto` (a re-run resumes, an fp32 one is refused), each shard's stats and
    the report's nodes say int8; a model without a twin runs in bf16 or fp32."""
    moved = levels_apart(tmp_path, "auto")
    assert max(moved) > 0, "the auto run's images are fp32's: auto did not pick int8"
    assert np.mean(moved) < 4
    dest, photos = tmp_path / "auto", tmp_path / "photos"
    assert json.loads((dest / "_manifest.json").read_text())["settings"]["precision"] == "auto"
    stats = [json.loads(p.read_text()) for p in (dest / "_stats").glob("*.json")]
    assert stats and {s["precision"] for s in stats} == {"int8"}
    assert "cpu int8" in (dest / "report.md").read_text()
    again = colorize_archive(str(photos), str(dest), precision="auto", shard_size=8)
    assert again["shards"]["done"] == 0 and again["shards"]["skipped"] >= 1  # resumed
    with pytest.raises(ConfigError, match=r"--precision: auto \(DEST\) -> fp32"):
        colorize_archive(str(photos), str(dest), precision="fp32", shard_size=8)
    mine = tmp_path / "mine.safetensors"
    models.save(models.build("small"), mine)
    colorize_archive(str(photos), str(tmp_path / "mine"), model=str(mine), precision="auto")
    stats = [json.loads(p.read_text()) for p in (tmp_path / "mine" / "_stats").glob("*.json")]
    assert {s["precision"] for s in stats} == {"bf16" if native_bf16() else "fp32"}
    scored = evaluate_model(str(photos), out=str(tmp_path / "ev"), precision="auto")
    assert scored["precision"] == "int8"  # evaluate resolves `auto` as the workers do

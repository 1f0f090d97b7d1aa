"""--precision int8 (issue 31): the default's shipped int8 twin (an OpenVINO IR) against fp32
on real photos, a model without a twin refused with what to do, and a run through the flow
whose DEST keeps its precision."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from skimage import data

import models
from flows.colorize import ConfigError, colorize_archive
from models.hints import Hint
from pipeline.colorize.hints import batch_planes
from pipeline.colorize.int8 import Int8Forward, NoInt8Twin, check_twin, twin_paths
from pipeline.colorize.precision import native_bf16, resolve_precision
from pipeline.colorize.predict import predict_working, working_batch
from pipeline.imaging.images import decode_image
from tests.archive_helpers import jpeg
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture
from tests.test_precision import levels_apart


def test_int8_keeps_the_default_models_colours_on_real_photos() -> None:
    """Four real photos through the int8 twin and through fp32 (T 0.2, the model's own).
    Tolerances from this CPU's measure (p50 1.0, p95 7.1, p99 10.7 ab, chroma 0.97) with
    margin; identical numbers would be a silent fp32."""
    model = models.load(models.DEFAULT_MODEL).eval()
    int8 = Int8Forward(models.DEFAULT_MODEL, model)
    photos = (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())
    lightness = [decode_image(jpeg(photo, 256)).lightness for photo in photos]
    batch = working_batch(lightness, model.working_size, model.device)
    fp32 = predict_working(model, batch, None, "fp32")[0]
    low = predict_working(model, batch, None, "int8", None, int8)[0]
    error = (low - fp32).norm(dim=1).flatten()
    p50, p95, p99 = (float(error.quantile(q)) for q in (0.5, 0.95, 0.99))
    assert p50 > 0.05, "int8 gave fp32's numbers: the quantized network did not run"
    assert p50 < 2.5 and p95 < 12 and p99 < 20, (p50, p95, p99)
    chroma = float(low.norm(dim=1).mean() / fp32.norm(dim=1).mean())
    assert 0.9 < chroma < 1.1, chroma
    with pytest.raises(ValueError, match="needs the model's int8 twin"):
        predict_working(model, batch, None, "int8")


def test_int8_colours_an_image_alike_whether_or_not_its_batch_holds_hinted_ones() -> None:
    """In int8, a batch with a hinted image runs the twin for every image's automatic logits
    and the torch network only for the hinted image's answer near its hints: the unhinted
    neighbour gets the int8 colours it gets alone, not fp32's."""
    model = models.load(models.DEFAULT_MODEL).eval()
    int8 = Int8Forward(models.DEFAULT_MODEL, model)
    photos = (data.astronaut(), data.coffee())
    lightness = [decode_image(jpeg(photo, 256)).lightness for photo in photos]
    batch = working_batch(lightness, model.working_size, model.device)
    grid = model.working_size // 4
    planes = batch_planes([[Hint(0.5, 0.2, 40.0, 40.0)], []], grid, grid, model.device)
    mixed = predict_working(model, batch, None, "int8", planes, int8)[0]
    alone = predict_working(model, batch, None, "int8", None, int8)[0]
    fp32 = predict_working(model, batch, None, "fp32", planes)[0]
    assert torch.allclose(mixed[1], alone[1], atol=1e-4), "the unhinted image left int8"
    assert float((mixed[1] - fp32[1]).abs().max()) > 0.05  # ...and int8 is not fp32
    hinted_moved = (mixed[0] - alone[0]).norm(dim=0)
    assert float(hinted_moved.max()) > 10  # the hinted image took its hint


def test_int8_mirrors_and_averages_as_a_flip_averaging_model_does() -> None:
    model = models.load(models.DEFAULT_MODEL).eval()
    plain = Int8Forward(models.DEFAULT_MODEL, model)
    model.flip_average = True
    mirrored = Int8Forward(models.DEFAULT_MODEL, model)
    lightness = [decode_image(jpeg(data.astronaut(), 256)).lightness]
    batch = working_batch(lightness, model.working_size, model.device)
    expected = (plain.logits(batch) + plain.logits(batch.flip(3)).flip(3)) / 2
    assert torch.allclose(mirrored.logits(batch), expected, atol=1e-5)
    assert not torch.allclose(plain.logits(batch), expected, atol=1e-3)


def test_int8_without_a_twin_says_what_to_do(tmp_path) -> None:
    path = tmp_path / "mine.safetensors"
    shutil.copy(models.DEFAULT_MODEL, path)
    with pytest.raises(NoInt8Twin, match=r"no int8 twin \(mine\.int8\.xml.*bf16 or fp32"):
        check_twin(path, torch.device("cpu"))
    with pytest.raises(NoInt8Twin, match="CPU workers only"):
        check_twin(models.DEFAULT_MODEL, torch.device("cuda"))
    check_twin(models.DEFAULT_MODEL, torch.device("cpu"))  # the shipped default has one


def test_a_twin_left_beside_other_weights_is_refused_and_auto_passes_it_over(tmp_path) -> None:
    """A checkpoint retrained (or replaced) under its name keeps the old twin beside it: int8
    must not run the old network for it, and `auto` must not pick it."""
    path = tmp_path / "default.safetensors"
    for source in (models.DEFAULT_MODEL, *twin_paths(models.DEFAULT_MODEL)):
        shutil.copy(source, tmp_path / source.name)
    shutil.copy(twin_paths(models.DEFAULT_MODEL)[0].with_suffix(".bin"), tmp_path)
    cpu = torch.device("cpu")
    check_twin(path, cpu)  # the copy and its twin: one set of weights
    assert resolve_precision("auto", cpu, path) == "int8"
    retrained = models.load(path)
    with torch.no_grad():
        next(retrained.net.parameters()).mul_(1.01)
    models.save(retrained, path)
    with pytest.raises(NoInt8Twin, match=r"built from other weights.*archive-colorize quantize"):
        check_twin(path, cpu)
    assert resolve_precision("auto", cpu, path) == ("bf16" if native_bf16() else "fp32")


def test_an_int8_run_colorizes_in_int8_and_its_dest_keeps_it(tmp_path, ray_local) -> None:  # noqa: F811
    moved = levels_apart(tmp_path, "int8")
    photos = tmp_path / "photos"
    assert max(moved) > 0, "the int8 run's images are fp32's: the worker ignored --precision"
    assert np.mean(moved) < 4  # mean RGB levels apart, of 255
    with pytest.raises(ConfigError, match=r"--precision: fp32 \(DEST\) -> int8"):
        colorize_archive(str(photos), str(tmp_path / "fp32"), precision="int8", shard_size=8)
    mine = tmp_path / "mine.safetensors"  # a model of one's own, without a twin
    shutil.copy(models.DEFAULT_MODEL, mine)
    with pytest.raises(ConfigError, match="has no int8 twin"):
        colorize_archive(str(photos), str(tmp_path / "mine"), model=str(mine), precision="int8")
    assert not (tmp_path / "mine").exists()

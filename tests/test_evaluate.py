"""`evaluate` reduces on its workers: each shard task sends per-bin sums of a fixed size, and
the set-rebalanced AuC made from them is the whole set's however it is sharded (real Ray,
Prefect's engine, real Parquet shards of real photos)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage import data

import models
from flows.evaluate import evaluate_model
from pipeline.archive.pack import pack_images
from pipeline.archive.shards import list_shards
from pipeline.training.evaluate import evaluate_shard, merge_evaluations
from tests.archive_helpers import jpeg
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Six real colour photos (crops of scikit-image's), 96 px on their longer side."""
    root = tmp_path_factory.mktemp("photos")
    crops = {
        "astronaut_face": data.astronaut()[:256, 128:384],
        "astronaut_flag": data.astronaut()[256:, :256],
        "coffee_cup": data.coffee()[:, :300],
        "coffee_beans": data.coffee()[:, 300:],
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }
    for name, rgb in crops.items():
        (root / f"{name}.jpg").write_bytes(jpeg(rgb, 96))
    return root


@pytest.fixture(scope="module")
def model_path() -> str:
    """The shipped model: its uncertainty differs from photo to photo (an untrained net's
    does not), which the rank correlation needs."""
    return str(Path(models.__file__).parent / "weights" / "default.safetensors")


def test_a_shard_sends_sums_of_one_size_whatever_its_images(
    tmp_path: Path, photo_folder: Path, model_path: str
):
    """The part a shard task returns holds one (2, Q) array per scorer, not one per image; the
    shards' parts, merged, give the figure of the whole set in one shard."""
    pack_images(str(photo_folder), str(tmp_path / "by3"), shard_size=2)
    pack_images(str(photo_folder), str(tmp_path / "by6"), shard_size=6)
    three = [
        evaluate_shard(model_path, s, split="all")
        for s in list_shards(str(tmp_path / "by3"), str(tmp_path / "out3"))
    ]
    (whole,) = [
        evaluate_shard(model_path, s, split="all")
        for s in list_shards(str(tmp_path / "by6"), str(tmp_path / "out6"))
    ]
    bins = models.load(model_path).centers.shape[0]
    for part in [*three, whole]:
        for who in ("model", "gray"):
            assert np.asarray(part["auc_bin_sums"][who]).shape == (2, bins)
    # pixel counts come from the truth alone, and the gray baseline needs no network: equal to
    # the pixel; the model's ab may differ in the last bits between batches of 2 and of 4
    for who, tolerance in (("gray", 0.0), ("model", 1e-6)):
        added = np.sum([p["auc_bin_sums"][who] for p in three], axis=0)
        np.testing.assert_array_equal(added[0], whole["auc_bin_sums"][who][0])
        np.testing.assert_allclose(added[1], whole["auc_bin_sums"][who][1], rtol=tolerance)
        merged = merge_evaluations(three)["metrics"]["auc_set_rebalanced"][who]
        direct = merge_evaluations([whole])["metrics"]["auc_set_rebalanced"][who]
        assert merged is not None and merged == pytest.approx(direct, rel=tolerance, abs=0)


@pytest.mark.slow
def test_set_rebalanced_auc_is_the_same_from_three_shards_as_from_one(
    tmp_path: Path,
    photo_folder: Path,
    model_path: str,
    ray_local,  # noqa: F811
):
    results = {}
    for shards, size in (("three", 2), ("one", 6)):
        packed = tmp_path / f"packed-{shards}"
        assert len(pack_images(str(photo_folder), str(packed), shard_size=size)) == len(
            {"three": range(3), "one": range(1)}[shards]
        )
        results[shards] = evaluate_model(
            str(packed), model=model_path, out=str(tmp_path / f"out-{shards}"), split="all"
        )
    three, one = results["three"], results["one"]
    assert three["images"] == one["images"] == 6
    # the gray baseline needs no network: the same integer sums, the same figure to the bit;
    # the model's ab may differ in the last bits between batches of 2 and of 4 photos
    for who, tolerance in (("gray", 0.0), ("model", 1e-6)):
        a = three["metrics"]["auc_set_rebalanced"][who]
        b = one["metrics"]["auc_set_rebalanced"][who]
        assert a is not None and b == pytest.approx(a, rel=tolerance, abs=0), (who, a, b)
        for name in ("auc", "auc_rebalanced", "psnr"):  # means over images: sums merge too
            mean = three["metrics"][name][who]
            assert one["metrics"][name][who] == pytest.approx(mean, rel=max(tolerance, 1e-12))
    # the uncertainty's rank correlation still sees every image's own pair
    assert three["uncertainty"]["images"] == one["uncertainty"]["images"] == 6
    assert three["uncertainty"]["spearman"] is not None
    assert math.isclose(three["uncertainty"]["spearman"], one["uncertainty"]["spearman"])


@pytest.mark.slow
def test_evaluate_hints_scores_the_hinted_model_beside_its_automatic_self(
    tmp_path: Path,
    photo_folder: Path,
    model_path: str,
    ray_local,  # noqa: F811
):
    """`evaluate --hints N` (issue 30): the shipped hint-aware model given 10 points of each
    photo's true colours is scored beside itself given none and the gray baseline; the hints
    lift PSNR and its output at the points is near their colours; the same points every run."""
    packed = tmp_path / "packed"
    pack_images(str(photo_folder), str(packed), shard_size=6)
    runs = {
        n: evaluate_model(str(packed), model=model_path, out=str(tmp_path / f"h{n}"), split="all",
                          hints=n)
        for n in (0, 10)
    }  # fmt: skip
    plain, hinted = runs[0], runs[10]
    assert "automatic" not in plain["metrics"]["psnr"] and plain["hint_error"]["points"] == 0
    for name in ("psnr", "auc_rebalanced", "auc"):  # "automatic" is the model with no hints
        assert hinted["metrics"][name]["automatic"] == pytest.approx(
            plain["metrics"][name]["model"], rel=1e-6
        )
    assert hinted["hints"] == 10 and hinted["hint_error"]["points"] == 60
    psnr = hinted["metrics"]["psnr"]
    assert psnr["model"] > psnr["automatic"] + 0.5, psnr
    assert hinted["hint_error"]["median"] < 10, hinted["hint_error"]
    markdown = (tmp_path / "h10" / "evaluation.md").read_text()
    assert "| metric | model | automatic | gray baseline |" in markdown
    again = evaluate_model(str(packed), model=model_path, out=str(tmp_path / "again"),
                           split="all", hints=10)  # fmt: skip
    assert again["metrics"]["psnr"]["model"] == pytest.approx(psnr["model"], rel=1e-6)


def test_evaluate_hints_refuses_a_model_without_hints_and_bad_counts(
    tmp_path: Path, photo_folder: Path
):
    from flows.colorize import ConfigError

    small = tmp_path / "small.safetensors"
    models.save(models.build("small"), small)
    with pytest.raises(ConfigError, match="takes no colour hints; evaluate a hint-aware model"):
        evaluate_model.fn(str(photo_folder), model=str(small), out=str(tmp_path / "o"), hints=3)
    with pytest.raises(ConfigError, match="--hints must be a number of hint points per photo"):
        evaluate_model.fn(str(photo_folder), model=str(small), out=str(tmp_path / "o"), hints=-1)
    assert not (tmp_path / "o").exists()

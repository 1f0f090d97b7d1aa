"""k-fold cross-validation: folds by id hash, old-print degradation, the summary, the flow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from flows import cli
from pipeline.archive.pack import pack_images
from pipeline.imaging.color import rgb_to_lab
from pipeline.imaging.degrade import OLD_PRINT, OldPrint, degrade_lightness, random_old_print
from pipeline.training.config import TrainConfig, check_fold, check_holdout_matches
from pipeline.training.crossval import (
    Decoding,
    choose_decoding,
    crossval_markdown,
    fold_figures,
    group_sources,
    summarise,
)
from pipeline.training.prepared import split_of, top_folder
from pipeline.training.stream import degraded_input
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture
from tests.test_training import photo_folder, tiny_archive


def test_folds_partition_the_ids_and_fold_zero_is_the_old_split():
    ids = [f"img-{i}" for i in range(3000)]
    held_out = [{i for i in ids if split_of(i, 0.2, fold) == "val"} for fold in range(5)]
    assert sum(len(h) for h in held_out) == len(ids)  # every id in exactly one fold
    assert set().union(*held_out) == set(ids)
    assert all(480 < len(h) < 720 for h in held_out)
    assert held_out[0] == {i for i in ids if split_of(i, 0.2) == "val"}
    with pytest.raises(ValueError, match=r"--fold must be in 0\.\.4"):
        check_fold(5, 0.2)
    with pytest.raises(ValueError, match="--fold"):
        TrainConfig(val_fraction=0.1, fold=10).validate()


def test_holdout_holds_out_one_source_folder_whatever_the_fold():
    ids = ["museum/a.jpg", "museum/sub/b.tif", "library/c.jpg", "museum.jpg", "museumx/d.jpg"]
    assert [top_folder(i) for i in ids] == ["museum", "museum", "library", "", "museumx"]
    for fold in range(5):
        held = [i for i in ids if split_of(i, 0.2, fold, holdout="museum") == "val"]
        assert held == ["museum/a.jpg", "museum/sub/b.tif"]
    with pytest.raises(ValueError, match="one top folder"):
        TrainConfig(holdout="museum/sub").validate()


def test_holdout_of_several_folders_holds_out_each_of_them_and_only_them():
    ids = ["museum/a.jpg", "museum/sub/b.tif", "library/c.jpg", "museum.jpg", "museumx/d.jpg",
           "parish/e.jpg"]  # fmt: skip
    for fold in range(5):
        held = [i for i in ids if split_of(i, 0.2, fold, holdout="library,museum") == "val"]
        assert held == ["museum/a.jpg", "museum/sub/b.tif", "library/c.jpg"]
    TrainConfig(holdout="library,museum").validate()
    for bad in ("library,,museum", ",museum", "museum,", "library,museum/sub"):
        with pytest.raises(ValueError, match="several comma-separated"):
            TrainConfig(holdout=bad).validate()  # an empty name would hold out the top level
    check_holdout_matches("library,museum", ["library", "museum", "parish"])
    with pytest.raises(ValueError, match="'musuem' matches no top folder"):
        check_holdout_matches("library,musuem", ["library", "museum", "parish"])


def test_sources_group_into_folds_of_similar_size_the_same_way_every_time():
    sizes = {"a": 263, "b": 53, "c": 53, "d": 50, "e": 28, "f": 24, "g": 19, "h": 1}
    # by hand: a (263) -> 0; b (53, before c by name) -> 1; c -> 2; d: folds 1 and 2 tie at
    # 53, the lower index -> 1 (103); e -> 2 (81); f -> 2 (105); g -> 1 (122); h -> 2 (106)
    expected = [["a"], ["b", "d", "g"], ["c", "e", "f", "h"]]
    assert group_sources(sizes, 3) == expected
    assert group_sources(dict(reversed(sizes.items())), 3) == expected  # not by dict order
    # equal sizes: by name, each to the emptiest fold, the lower index among equals
    assert group_sources({"z": 2, "y": 2, "x": 2, "w": 2}, 2) == [["w", "y"], ["x", "z"]]


def test_crossval_groups_refuses_what_it_cannot_group_before_anything_is_written(tmp_path, capsys):
    src = photo_folder(tmp_path / "photos", {"library": 2, "museum": 1, "parish": 1})
    out = tmp_path / "cv"
    argv = ["crossval", str(src), str(out), "--arch", "small", "--steps", "2", "--crop", "64",
            "--batch-size", "4", "--checkpoint-every", "2"]  # fmt: skip
    for bad, says in (
        (["--groups", "2", "--by-folder"], "--groups and --by-folder"),
        (["--groups", "1"], "--groups must be in 2..20, got 1"),
        (["--groups", "21"], "--groups must be in 2..20, got 21"),
        (["--groups", "4"], "--groups 4 needs photos in at least 4 top folders"),
    ):
        with pytest.raises(SystemExit) as exit_code:
            cli.main([*argv, *bad])
        assert exit_code.value.code == 2
        assert says in capsys.readouterr().err
        assert not out.exists()
    (src / "loose.jpg").write_bytes((src / "museum" / "0.jpg").read_bytes())
    with pytest.raises(SystemExit) as exit_code:
        cli.main([*argv, "--groups", "2"])
    assert exit_code.value.code == 2
    assert "--groups 2: some photos of" in capsys.readouterr().err
    assert not out.exists()
    (src / "st. mary, parish").mkdir()  # --holdout would read its name as two folders
    (src / "loose.jpg").rename(src / "st. mary, parish" / "0.jpg")
    with pytest.raises(SystemExit) as exit_code:
        cli.main([*argv, "--groups", "2"])
    assert exit_code.value.code == 2
    assert "have a comma in their name" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_crossval_groups_scores_each_group_on_a_model_that_never_saw_its_sources(
    tmp_path,
    ray_local,  # noqa: F811
    capsys,
):
    sizes = {"library": 4, "museum": 3, "parish": 2, "school": 2}
    # library (4) -> 0; museum (3) -> 1; parish (2) -> 1 (5); school (2) -> 0 (6)
    groups = {"group-0": ["library", "school"], "group-1": ["museum", "parish"]}
    src = photo_folder(tmp_path / "photos", sizes)
    out = tmp_path / "cv"
    argv = ["crossval", str(src), str(out), "--groups", "2", "--arch", "small", "--steps", "2",
            "--crop", "64", "--batch-size", "4", "--checkpoint-every", "2"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv)
    assert exit_code.value.code == 0
    result = json.loads((out / "crossval.json").read_text())
    assert result["folds"] == 2 and result["fold_names"] == list(groups)
    assert result["clean"]["rebalanced AuC - gray (points)"]["folds"] == 2
    assert [g["sources"] for g in result["groups"]] == [
        {name: sizes[name] for name in names} for names in groups.values()
    ]
    assert [g["photos"] for g in result["groups"]] == [6, 5]
    assert not list(out.glob("fold-*"))
    for group, names in groups.items():
        held_out = sum(sizes[name] for name in names)
        card = json.loads((out / group / "model.json").read_text())
        assert card["training"]["hyperparameters"]["holdout"] == ",".join(names)
        assert card["training"]["images"] == sum(sizes.values()) - held_out  # never saw them
        for evaluation in ("evaluation", "evaluation-old-print"):
            scored = json.loads((out / group / evaluation / "evaluation.json").read_text())
            assert scored["images"] == held_out and scored["holdout"] == ",".join(names)
    markdown = (out / "crossval.md").read_text()
    assert "| group-0 | 6 | library (4), school (2) |" in markdown
    assert "| group-1 | 5 | museum (3), parish (2) |" in markdown
    assert "- group-1:" in markdown
    # a re-run finds both groups evaluated: nothing is trained again, and it succeeds
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("group-*/model.safetensors")}
    assert len(stamps) == 2
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv)
    assert exit_code.value.code == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _gray_scans(folder: Path, n: int) -> None:
    """N small gray scans: packed and listed like any photo, but with no colour to learn or
    score (preparation and evaluation count and skip them)."""
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 + i % 200, np.uint8)).save(folder / f"g{i:03d}.png")


def test_crossval_by_folder_scores_each_source_on_a_model_that_never_saw_it(
    tmp_path,
    ray_local,  # noqa: F811
    capsys,
):
    sizes = {"library": 5, "museum": 7}
    src = photo_folder(tmp_path / "photos", sizes)
    out = tmp_path / "cv"
    argv = ["crossval", str(src), str(out), "--by-folder", "--arch", "small", "--steps", "2",
            "--crop", "64", "--batch-size", "4", "--checkpoint-every", "2"]  # fmt: skip
    # a photo at SOURCE's top level is in no source folder (its "folder" "" would mean: no
    # holdout, a hash split): refused before anything is written
    (src / "loose.jpg").write_bytes((src / "museum" / "0.jpg").read_bytes())
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv)
    assert exit_code.value.code == 2
    assert "at its top level, in no source folder" in capsys.readouterr().err
    assert not out.exists()
    (src / "loose.jpg").unlink()

    # a pack interrupted after its first shard (of 256 files: the gray scans and
    # museum/0.jpg); the run completes it, so every fold trains and scores on the whole corpus
    _gray_scans(src / "library" / "scans", 250)
    assert pack_images(str(src), str(out / "data"))[1].endswith("part-00001.parquet")
    (out / "data" / "part-00001.parquet").unlink()
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv)
    assert exit_code.value.code == 0
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "_pack.json", "part-00000.parquet", "part-00001.parquet"
    ]  # fmt: skip
    result = json.loads((out / "crossval.json").read_text())
    assert result["fold_names"] == ["library", "museum"] and result["folds"] == 2
    for folder, n in sizes.items():
        card = json.loads((out / f"fold-{folder}/model.json").read_text())
        assert card["training"]["hyperparameters"]["holdout"] == folder
        assert card["training"]["images"] == sum(sizes.values()) - n  # never saw its source
        for evaluation in ("evaluation", "evaluation-old-print"):
            scored = json.loads((out / f"fold-{folder}/{evaluation}/evaluation.json").read_text())
            assert scored["images"] == n and scored["holdout"] == folder
    assert "- fold museum:" in (out / "crossval.md").read_text()


def test_crossval_refuses_final_with_validation_before_any_fold_trains(tmp_path, capsys):
    src = tiny_archive(tmp_path / "src", n=4)
    out = tmp_path / "cv"
    for option in ("--val-every", "--patience"):
        # a tiny recipe, so that a check come too late fails in seconds, not in a training
        argv = ["crossval", str(src), str(out), "--folds", "2", "--final", "--val-every", "2",
                option, "1", "--arch", "small", "--steps", "2", "--crop", "64",
                "--batch-size", "4"]  # fmt: skip
        with pytest.raises(SystemExit) as exit_code:
            cli.main(argv)
        assert exit_code.value.code == 2
        assert "--final trains on every photo" in capsys.readouterr().err
        assert not out.exists()


def _lightness() -> np.ndarray:
    rgb = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255.0
    return rgb_to_lab(rgb)[0].numpy()


def test_old_print_degrades_every_way_it_names_and_is_seeded():
    clean = _lightness()
    rng = np.random.default_rng
    assert np.array_equal(degrade_lightness(clean, OldPrint(), rng(0)), clean.astype(np.float32))
    old = degrade_lightness(clean, OLD_PRINT, rng(1))
    assert old.shape == clean.shape and old.dtype == np.float32
    assert old.min() >= 0 and old.max() <= 100
    np.testing.assert_array_equal(old, degrade_lightness(clean, OLD_PRINT, rng(1)))
    assert not np.array_equal(old, degrade_lightness(clean, OLD_PRINT, rng(2)))  # other grain
    faded = degrade_lightness(clean, OldPrint(lift=20, fade=15), rng(0))
    assert faded.min() >= 20 - 1e-4 and faded.max() <= 85 + 1e-4  # blacks lifted, whites dimmed
    soft = degrade_lightness(clean, OldPrint(blur=1.5), rng(0))
    assert np.abs(np.diff(soft, axis=1)).mean() < 0.7 * np.abs(np.diff(clean, axis=1)).mean()
    grainy = degrade_lightness(clean, OldPrint(grain=6), rng(0))
    assert 4 < float(np.std(grainy - clean)) < 8
    dusty = degrade_lightness(clean, OldPrint(dust=3), rng(0))
    assert 0 < np.mean(dusty != clean) < 0.05  # specks, not a veil
    blocky = degrade_lightness(clean, OldPrint(jpeg=30), rng(0))
    assert 0.2 < np.abs(blocky - clean).mean() < 5


def test_training_degrades_the_input_only_and_only_the_share_asked():
    lightness = torch.from_numpy(np.stack([_lightness()[:128, :128]] * 8))[:, None]
    none = degraded_input(lightness, TrainConfig(degrade=0.0), step=3, rank=0)
    assert none is lightness
    config = TrainConfig(degrade=0.5)
    some = degraded_input(lightness, config, step=3, rank=0)
    torch.testing.assert_close(some, degraded_input(lightness, config, step=3, rank=0))
    changed = [not torch.equal(a, b) for a, b in zip(some, lightness, strict=True)]
    assert 0 < sum(changed) < 8
    every = degraded_input(lightness, TrainConfig(degrade=1.0), step=3, rank=0)
    assert all(not torch.equal(a, b) for a, b in zip(every, lightness, strict=True))
    assert random_old_print(np.random.default_rng(0)) != random_old_print(np.random.default_rng(1))


def test_summary_is_the_mean_and_sample_spread_over_folds():
    def evaluation(model_auc: float) -> dict:
        return {"metrics": {
            "auc_rebalanced": {"model": model_auc, "gray": 0.70},
            "auc": {"model": 0.80, "gray": 0.81},
            "colorfulness": {"model": 30.0, "gray": 0.0},
            "colorfulness_delta": {"model": -10.0, "gray": -40.0},
        }, "uncertainty": {"spearman": 0.4, "images": 9}}  # fmt: skip

    folds = [fold_figures(evaluation(a)) for a in (0.72, 0.74, 0.76)]
    assert folds[0]["rebalanced AuC - gray (points)"] == pytest.approx(2.0)
    assert folds[0]["raw AuC - gray (points)"] == pytest.approx(-1.0)
    assert folds[0]["colourfulness (% of the truth)"] == pytest.approx(75.0)
    assert folds[0]["uncertainty vs error (Spearman)"] == pytest.approx(0.4)
    summary = summarise(folds)["rebalanced AuC - gray (points)"]
    assert summary["mean"] == pytest.approx(4.0) and summary["std"] == pytest.approx(2.0)
    assert (summary["min"], summary["max"], summary["folds"]) == pytest.approx((2.0, 6.0, 3))
    # with --val-every each fold's model was chosen on the photos it is scored on: said so
    result = {"folds": 3, "source": "src", "recipe": {}, "clean": {}, "old_print": {},
              "per_fold": {"clean": folds, "old_print": folds}}  # fmt: skip
    assert "Selection:" not in crossval_markdown(result)
    assert "flatter" in crossval_markdown({**result, "selected_on_evaluated_photos": True})


def _figures(colour: float, raw: float) -> dict:
    return {"colourfulness (% of the truth)": {"mean": colour, "std": 1.0},
            "raw AuC - gray (points)": {"mean": raw, "std": 0.5}}  # fmt: skip


def test_the_decoding_chosen_paints_enough_colour_with_the_fewest_wrong_ones():
    own, cold, colder, gain = (Decoding(0.38), Decoding(0.26), Decoding(0.18),
                               Decoding(0.26, 1.15))  # fmt: skip
    candidates = {own: _figures(64.0, 0.0), cold: _figures(76.0, 0.0),
                  colder: _figures(79.0, -0.1), gain: _figures(81.0, -0.6)}  # fmt: skip
    assert choose_decoding(candidates, floor=75.0) == cold  # the best raw AuC of those >= 75
    assert choose_decoding(candidates, floor=80.0) == gain
    assert choose_decoding(candidates, floor=60.0) == own  # ties on raw AuC: the warmest
    # none reaches the floor: the most colourful one
    assert choose_decoding({own: _figures(60.0, 0.0), cold: _figures(66.0, 0.0)}) == cold
    with pytest.raises(ValueError, match="no candidate"):
        choose_decoding({})
    assert Decoding.parse("0.26x1.15") == gain and gain.name == "0.26x1.15"
    assert Decoding.parse("0.38") == own and own.name == "0.38"
    for bad in ("0", "0.3x0", "0.3x4", "warm"):
        with pytest.raises(ValueError):
            Decoding.parse(bad)


def test_crossval_refuses_decodings_it_cannot_make_before_anything_is_written(tmp_path, capsys):
    src = photo_folder(tmp_path / "photos", {"a": 2, "b": 2})
    out = tmp_path / "cv"
    for bad in ("0,0.3", "0.3;0.2", "0.3x0"):
        with pytest.raises(SystemExit) as exit_code:
            cli.main(["crossval", str(src), str(out), "--decodings", bad])
        assert exit_code.value.code == 2
        assert "--decodings takes temperatures" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_crossval_trains_each_fold_on_the_rest_and_resumes(tmp_path, ray_local, capsys):  # noqa: F811
    # custom column names: every step (training, both evaluations, the final model) must
    # read the photos by them, and split them by these ids
    src = tiny_archive(tmp_path / "src", n=12, id_column="photo_id", image_column="jpeg")
    ids = [f"photo-{i:03d}" for i in range(12)]
    out = tmp_path / "cv"
    argv = ["crossval", str(src), str(out), "--folds", "2", "--arch", "small", "--steps", "2",
            "--crop", "64", "--batch-size", "4", "--checkpoint-every", "2",
            "--image-column", "jpeg", "--id-column", "photo_id",
            "--degrade", "0.5", "--decodings", "0.2x1.5", "--final"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv)
    assert exit_code.value.code == 0
    result = json.loads((out / "crossval.json").read_text())
    assert result["folds"] == 2 and result["recipe"]["degrade"] == 0.5
    assert result["clean"]["rebalanced AuC - gray (points)"]["folds"] == 2
    assert "old print" in (out / "crossval.md").read_text()
    evaluated = 0
    for fold in range(2):
        clean = json.loads((out / f"fold-{fold}/evaluation/evaluation.json").read_text())
        old = json.loads((out / f"fold-{fold}/evaluation-old-print/evaluation.json").read_text())
        card = json.loads((out / f"fold-{fold}/model.json").read_text())
        assert card["training"]["hyperparameters"]["fold"] == fold
        assert clean["fold"] == old["fold"] == fold and old["degrade"] and not clean["degrade"]
        # both scored exactly the photos the fold held out by their ids: as many, and the
        # same ones (the gray image's colourfulness gap is minus their true colourfulness,
        # which old-print inputs do not change, but for the faint colour rounding leaves in
        # a gray image: 1e-4; another photo in the set would move it by whole units)
        held_out = [i for i in ids if split_of(i, 0.5, fold) == "val"]
        for scored in (clean, old):
            assert scored["images"] == len(held_out)
            assert scored["skipped"]["other_split"] == 12 - len(held_out)
        gap = "colorfulness_delta"
        assert old["metrics"][gap]["gray"] == pytest.approx(clean["metrics"][gap]["gray"], abs=0.01)
        # fold f's model trained on the other fold's photos only, and is scored on its own
        assert card["training"]["images"] == 12 - clean["images"]
        assert clean["metrics"]["psnr"]["gray"] != old["metrics"]["psnr"]["gray"]
        evaluated += clean["images"]
    assert evaluated == 12  # the two folds together score every photo once
    # the model to ship: the recipe on every photo, its card carrying the folds' figures
    final = json.loads((out / "final" / "model.json").read_text())
    assert final["training"]["images"] == 12 and final["metrics"] is None
    assert final["training"]["hyperparameters"]["val_fraction"] == 0.0
    assert final["crossval"]["clean"] == result["clean"] and final["crossval"]["folds"] == 2
    # --decodings: every fold scored decoded at T 0.2 x 1.5 too, on the same held-out photos;
    # the final model decodes as the folds chose, its card says how it was chosen
    decoding = result["decoding"]
    assert set(decoding["candidates"]) == {"0.2x1.5", "0.38"}
    assert decoding["candidates"]["0.38"] == result["clean"]
    for fold in range(2):
        at = json.loads((out / f"fold-{fold}/evaluation-T0.2-G1.5/evaluation.json").read_text())
        clean = json.loads((out / f"fold-{fold}/evaluation/evaluation.json").read_text())
        assert (at["temperature"], at["chroma_gain"]) == (0.2, 1.5)
        assert (clean["temperature"], clean["chroma_gain"]) == (0.38, 1.0)
        assert at["images"] == clean["images"]
        assert fold_figures(at) == decoding["per_fold"]["0.2x1.5"][fold]
    chosen = choose_decoding({Decoding.parse(d): s for d, s in decoding["candidates"].items()})
    assert decoding["chosen"] == chosen.name
    assert final["config"]["temperature"] == chosen.temperature
    assert final["config"]["chroma_gain"] == chosen.chroma_gain
    assert final["crossval"]["decoding"] == decoding
    assert "Decoding chosen by the folds" in (out / "crossval.md").read_text()
    # a re-run finds both folds evaluated: nothing is trained again, and it succeeds
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold-*/model.safetensors")}
    with pytest.raises(SystemExit) as exit_code:
        cli.main(argv[:-1])
    assert exit_code.value.code == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # another recipe into the same OUT: refused, its folds do not stand in for the new one's
    before = (out / "crossval.json").read_bytes()
    with pytest.raises(SystemExit) as exit_code:
        cli.main([*argv[:-1], "--degrade", "0.2"])
    assert exit_code.value.code != 0
    assert "degrade 0.5 -> 0.2" in capsys.readouterr().err
    assert (out / "crossval.json").read_bytes() == before

"""`archive-colorize quantize` (issue 31): a model's int8 twin built from a folder of real
photos (two source folders, one truncated JPEG among them), its card, the twin run as a worker
runs it against fp32, and the command line with its refusals."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

import models
from flows import cli
from pipeline.colorize.int8 import Int8Forward, twin_paths
from pipeline.colorize.precision import twin_within_tolerance
from pipeline.colorize.predict import working_batch
from pipeline.imaging.images import decode_image
from pipeline.training.quantize import (
    DEFAULT_CALIBRATION,
    DEFAULT_CHECK,
    QuantizeUnavailable,
    ab_vs_fp32,
    build_int8_twin,
    photo_order,
)

PRINTS = ("astronaut", "chelsea", "coffee", "rocket")  # prints/NAME.jpg
SCANS = ("camera", "cat", "immunohistochemistry")  # scans/NAME.png (camera: a gray photo)
# the round-robin over prints/ and scans/ (scans/broken.jpg sorts first and is skipped)
CALIBRATION = ["prints/astronaut.jpg", "prints/chelsea.jpg", "scans/camera.png",
               "prints/coffee.jpg", "scans/cat.png"]  # fmt: skip
CHECK = ["prints/rocket.jpg", "scans/immunohistochemistry.png"]
SHIPPED_CARD = twin_paths(models.DEFAULT_MODEL)[1]


def write_photos(root: Path) -> Path:
    (root / "prints").mkdir(parents=True)
    (root / "scans").mkdir()
    for name in PRINTS:
        Image.fromarray(getattr(data, name)()).save(root / "prints" / f"{name}.jpg", quality=90)
    for name in SCANS:
        Image.fromarray(getattr(data, name)()).save(root / "scans" / f"{name}.png")
    whole = (root / "prints" / "astronaut.jpg").read_bytes()
    (root / "scans" / "broken.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    (root / "scans" / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("corpus") / "photos")


@pytest.fixture(scope="module")
def default_twin(tmp_path_factory, photo_dir) -> tuple[Path, dict]:
    """The shipped default (lite2-plain-hints: its automatic path is exported) quantized on
    five of the photos, checked on the rest."""
    path = tmp_path_factory.mktemp("model") / "default.safetensors"
    shutil.copy(models.DEFAULT_MODEL, path)
    card = build_int8_twin(path, photo_dir, count=5, check=4, corpus="tests/test_quantize.py")
    return path, card


def lightness_of(root: Path, names: list[str], size: int) -> torch.Tensor:
    maps = [decode_image((root / name).read_bytes()).lightness for name in names]
    return working_batch(maps, size, torch.device("cpu")).float()


def test_photos_are_taken_sorted_and_round_robin_over_the_top_folders(tmp_path) -> None:
    for name in ("b/2.jpg", "b/1.PNG", "b/deep/0.tif", "a/x.jpeg", "top.png", "a/skip.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert photo_order(tmp_path) == ["top.png", "a/x.jpeg", "b/1.PNG", "b/2.jpg", "b/deep/0.tif"]
    linked = tmp_path.parent / f"{tmp_path.name}-linked"  # a folder of links to sources
    linked.mkdir()
    (linked / "b").symlink_to(tmp_path / "b", target_is_directory=True)
    (tmp_path / "b" / "3.webp").write_bytes(b"")
    assert photo_order(linked) == ["b/1.PNG", "b/2.jpg", "b/3.webp", "b/deep/0.tif"]


def test_the_card_names_the_photos_by_the_rule_and_the_corrupt_one_skipped(
    default_twin, photo_dir
) -> None:
    path, card = default_twin
    xml, card_path = twin_paths(path)
    assert json.loads(card_path.read_text()) == card  # the card written is the one returned
    calibration = card["calibration"]
    assert calibration["photos"] == CALIBRATION and calibration["count"] == 5
    assert [s["photo"] for s in calibration["skipped"]] == ["scans/broken.jpg"]
    assert "truncated" in calibration["skipped"][0]["error"]
    assert card["check"]["photos"] == CHECK and card["check"]["count"] == 2
    digests = "".join(hashlib.sha256((photo_dir / n).read_bytes()).hexdigest() for n in CALIBRATION)
    assert calibration["sha256_of_file_digests"] == hashlib.sha256(digests.encode()).hexdigest()
    assert calibration["corpus_command"] == "tests/test_quantize.py"
    assert "round-robin" in calibration["rule"]
    assert card["source_model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for key, file in (("xml_sha256", xml), ("bin_sha256", xml.with_suffix(".bin"))):
        assert card["ir"][key] == hashlib.sha256(file.read_bytes()).hexdigest(), key
    assert str(photo_dir) not in card_path.read_text()  # no machine paths
    assert str(path.parent) not in card_path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == [  # no temp folder left behind
        "default.int8.bin", "default.int8.json", "default.int8.xml", "default.safetensors"
    ]  # fmt: skip
    shipped = json.loads(SHIPPED_CARD.read_text())  # Int8Forward's and auto's keys are kept
    assert set(shipped) - {"evaluate"} <= set(card)
    for part in ("source_model", "ir", "calibration", "check"):
        assert set(shipped[part]) <= set(card[part]), part
    assert set(shipped["check"]["vs_fp32"]) == set(card["check"]["vs_fp32"])


def test_the_twin_runs_in_int8_and_keeps_the_colours(default_twin, photo_dir) -> None:
    """The twin as a worker runs it, against fp32 on the held-out photos: not fp32's numbers
    (a twin saved unquantized would give them to 1e-5), but the same colours within the
    shipped twin's measured tolerances (tests/test_int8.py)."""
    path, card = default_twin
    model = models.load(path).eval()
    twin = Int8Forward(path, model)
    lightness = lightness_of(photo_dir, CHECK, model.working_size)
    with torch.inference_mode():
        int8 = twin.logits(lightness)
        fp32 = model.logits(lightness)
    assert int8.shape == fp32.shape
    assert float((int8 - fp32).abs().max()) > 0.05, "the twin gave fp32's logits: not int8"
    figures = ab_vs_fp32(model, lightness, int8)
    assert figures["ab_p50"] > 0.05
    assert figures["ab_p50"] < 2.5 and figures["ab_p95"] < 12 and figures["ab_p99"] < 20, figures
    assert 0.9 < figures["chroma_ratio"] < 1.1, figures
    for name, value in card["check"]["vs_fp32"].items():  # the card's are these
        assert value == pytest.approx(figures[name], rel=1e-3, abs=1e-3), name
    assert twin_within_tolerance(card)


def test_an_automatic_lite_net_gets_a_twin_and_a_card_that_says_it_was_not_checked(
    tmp_path, photo_dir
) -> None:
    path = models.save(models.build("lite0-plain"), tmp_path / "lite.safetensors")
    card = build_int8_twin(path, photo_dir, count=6, check=3)
    assert card["calibration"]["count"] == 6 and card["check"]["photos"] == [CHECK[1]]
    assert card["calibration"]["corpus_command"] is None
    card = build_int8_twin(path, photo_dir, count=7, check=3)  # every photo: none held out
    assert card["check"]["photos"] == [] and "vs_fp32" not in card["check"]
    assert "more photos than --photos" in card["check"]["note"]
    assert not twin_within_tolerance(card)  # auto runs no twin it has no figures for
    model = models.load(path).eval()
    lightness = lightness_of(photo_dir, CHECK, model.working_size)
    assert Int8Forward(path, model).logits(lightness).shape == (2, model.num_bins, 64, 64)


def test_a_folder_with_too_few_readable_photos_is_refused(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    path = models.save(models.build("small"), tmp_path / "small.safetensors")
    with pytest.raises(ValueError, match=r"2 photos that decode.*broken\.jpg.*at least 4"):
        build_int8_twin(path, photos, count=4)
    assert not twin_paths(path)[0].exists()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["photos", "small.json", "small.safetensors"]


def test_without_nncf_it_says_how_to_install_it(tmp_path, photo_dir, monkeypatch) -> None:
    path = models.save(models.build("small"), tmp_path / "small.safetensors")
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    with pytest.raises(QuantizeUnavailable, match=r"pip install 'archive-colorize\[quantize\]'"):
        build_int8_twin(path, photo_dir)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_the_command_builds_a_twin_and_refuses_bad_options_saying_how_to_fix_them(
    tmp_path, photo_dir, capsys
) -> None:
    model = models.save(models.build("small"), tmp_path / "small.safetensors")
    argv = ["quantize", str(model), str(photo_dir)]
    code, out, _ = run_cli([*argv, "--photos", "4", "--check", "2", "--corpus", "skimage"], capsys)
    assert code == 0
    card = json.loads(twin_paths(model)[1].read_text())
    assert card["calibration"]["count"] == 4 and card["check"]["count"] == 2
    assert card["calibration"]["corpus_command"] == "skimage"
    assert "calibrated on 4 photos" in out and "scans/broken.jpg" in out
    assert "vs fp32 on 2 held-out photos: ab error p50" in out

    bad = {
        ("--photos", "2"): r"--photos\): at least 4, got 2",
        ("--check", "-1"): r"--check\): 0 or more",
    }
    for flags, message in bad.items():
        code, _, err = run_cli([*argv, *flags], capsys)
        assert code == 2 and "archive-colorize quantize: error:" in err
        assert re.search(message, err), err
    code, _, err = run_cli(["quantize", str(tmp_path / "nope.safetensors"), str(photo_dir)], capsys)
    assert code == 2 and "no model checkpoint at" in err and "'default'" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["quantize", str(model), str(tmp_path / "empty")], capsys)
    assert code == 2 and "holds no photos (.jpg .jpeg .png .tif .tiff .webp files" in err

    parser = cli.build_parser().parse_args(argv)  # the command's defaults are the module's
    assert (parser.photos, parser.check) == (DEFAULT_CALIBRATION, DEFAULT_CHECK)

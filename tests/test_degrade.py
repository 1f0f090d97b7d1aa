"""Film-like inputs (issue 29): a film's gray of a colour photo (`degrade.film_lightness`), the
training stream's share of them (`--film`), and `evaluate --film NAME` through the flow."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage import color, data

import models
from flows import cli
from flows.colorize import ConfigError
from flows.evaluate import evaluate_model
from pipeline.archive.shards import list_shards
from pipeline.imaging.degrade import FILMS, LUMINANCE, film_lightness, random_film
from pipeline.training.config import TrainConfig
from pipeline.training.evaluate import evaluate_shard
from pipeline.training.prepared import ab_targets
from pipeline.training.stream import (
    Position,
    crop_of,
    degraded_input,
    film_input,
    make_batch,
    samples,
)
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture
from tests.test_training import _local_prepared, tiny_archive


def _patch(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((8, 8, 3), rgb, np.uint8)


def _lab_l(rgb: np.ndarray) -> np.ndarray:
    return color.rgb2lab(rgb)[..., 0]


RED = _patch((255, 0, 0))  # a pure red: lips, a flag's stripe
SKY = _patch((110, 160, 230))  # a clear blue sky


def test_luminance_weights_give_labs_lightness(photos):
    for rgb in photos.values():
        want = _lab_l(rgb)
        got = film_lightness(rgb, LUMINANCE)
        assert got.shape == rgb.shape[:2] and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
        # float in [0, 1] and 16-bit inputs read the same colours
        np.testing.assert_allclose(film_lightness(rgb / 255.0, LUMINANCE), want, atol=1e-3)
        rgb16 = rgb.astype(np.uint16) * 257
        np.testing.assert_allclose(film_lightness(rgb16, LUMINANCE), want, atol=1e-3)
        # the weights are normalised: any scale of them is the same film
        np.testing.assert_array_equal(
            film_lightness(rgb, [3 * w for w in LUMINANCE]), film_lightness(rgb, LUMINANCE)
        )
        # Rec. 709's rounded coefficients are the same luminance to a hundredth of L
        np.testing.assert_allclose(film_lightness(rgb, (0.2126, 0.7152, 0.0722)), want, atol=0.01)
    white, black = _patch((255, 255, 255)), _patch((0, 0, 0))
    for weights in FILMS.values():  # white stays white and black black on every film
        assert film_lightness(white, weights) == pytest.approx(100.0, abs=1e-3)
        assert film_lightness(black, weights) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        film_lightness(white, (1.0, -0.5, 0.5))


def test_ortho_is_blind_to_red_and_sees_skies_light():
    ortho = FILMS["ortho"]
    # a pure red comes out far darker than Lab's L (53): near black on orthochromatic film
    assert film_lightness(RED, ortho).max() < _lab_l(RED).min() - 20
    # a blue sky far lighter (Lab's L 65)
    assert film_lightness(SKY, ortho).min() > _lab_l(SKY).max() + 10
    # a real red: a stripe of the astronaut's flag, far darker than Lab's L on ortho
    stripe = data.astronaut()[390:402, 104:116]
    assert stripe[..., 0].min() > 150 and stripe[..., 1:].max() < 80  # a red, as cut
    assert film_lightness(stripe, ortho).mean() < _lab_l(stripe).mean() - 10


def test_filters_on_pan_darken_a_blue_sky_in_order():
    sky = {name: float(film_lightness(SKY, FILMS[name]).mean()) for name in FILMS}
    # the filters cut blue more and more, the red one green too: each sky darker than the last
    assert sky["pan"] > sky["yellow"] > sky["orange"] > sky["red"]
    assert sky["red"] < sky["pan"] - 5
    # pan is close to luminance: near Lab's L; the red filter renders a red light
    assert sky["pan"] == pytest.approx(float(_lab_l(SKY).mean()), abs=2)
    assert film_lightness(RED, FILMS["red"]).min() > film_lightness(RED, FILMS["pan"]).max() + 10


def test_random_films_are_every_kind_within_the_data_sheets_and_seeded():
    draws = np.array([random_film(np.random.default_rng([0, i])) for i in range(1000)])
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)
    assert draws.min() >= 0
    ortho = draws[:, 2] > 0.3  # blue-sensitive: ortho, red-blind
    red = ~ortho & (draws[:, 0] > 0.4)  # pan behind a red filter: red and green, no blue
    pan_like = ~ortho & ~red  # pan, yellow, orange: near luminance, less and less blue
    assert draws[ortho, 0].max() <= 0.1 / (0.1 + 0.3 + 0.4) + 1e-9  # R 0-0.1 before scaling
    assert 0.15 < ortho.mean() < 0.25 and 0.15 < red.mean() < 0.25
    assert 0.5 < pan_like.mean() < 0.7
    assert (draws[pan_like, 2] < 0.1).all() and (draws[red, 2] < 0.03).all()
    assert len({tuple(np.round(d, 6)) for d in draws}) == 1000  # jittered, not five fixed
    assert random_film(np.random.default_rng(5)) == random_film(np.random.default_rng(5))


def test_the_film_share_is_checked_with_a_message_saying_how_to_fix_it():
    TrainConfig(film=0.0).validate()
    TrainConfig(film=1.0).validate()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"--film must be in \[0, 1\]"):
            TrainConfig(film=bad).validate()


def test_the_stream_feeds_film_grays_with_the_true_colours_and_film_0_is_unchanged(tmp_path):
    blocks = _local_prepared(tmp_path)
    taken = list(itertools.islice(samples(blocks, 0, 0, 1, 2, Position()), 8))
    base: dict[str, Any] = dict(crop=64, prepared=72, batch_size=8, scale_min=0.5, seed=3)
    step, rank = 5, 0

    def lab(config: TrainConfig) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        rgb = np.stack([crop_of(s, config) for s in taken])  # the crops, as the stream cuts
        return (rgb, *ab_targets(torch.from_numpy(rgb)))

    # film 0: exactly the inputs of before, with or without old prints on top
    for degrade in (0.0, 0.5):
        config = TrainConfig(**base, degrade=degrade, film=0.0)
        _, lightness, ab = lab(config)
        batch = make_batch(taken, config, step, rank)
        want = degraded_input(lightness, config, step, rank)
        torch.testing.assert_close(batch.lightness, want, rtol=0, atol=0)
        torch.testing.assert_close(batch.ab, ab, rtol=0, atol=0)
    # film 1: every input is a film's gray, not Lab's L; the targets are the true ab
    config = TrainConfig(**base, degrade=0.0, film=1.0)
    rgb, lightness, ab = lab(config)
    batch = make_batch(taken, config, step, rank)
    torch.testing.assert_close(batch.ab, ab, rtol=0, atol=0)
    for got, clean in zip(batch.lightness, lightness, strict=True):
        assert float((got - clean).abs().mean()) > 0.3
    again = make_batch(taken, config, step, rank)  # seeded: a resumed run draws the same
    torch.testing.assert_close(again.lightness, batch.lightness, rtol=0, atol=0)
    assert not torch.equal(make_batch(taken, config, step + 1, rank).lightness, batch.lightness)
    # a share: some films, some Lab's L
    half = make_batch(taken, TrainConfig(**base, degrade=0.0, film=0.5), step, rank)
    same = [torch.equal(a, b) for a, b in zip(half.lightness, lightness, strict=True)]
    assert 0 < sum(same) < len(same)
    # with old prints too: the film's gray first, then the damage, from their own draws
    both = TrainConfig(**base, degrade=1.0, film=1.0)
    want = degraded_input(film_input(lightness, rgb, both, step, rank), both, step, rank)
    torch.testing.assert_close(make_batch(taken, both, step, rank).lightness, want, rtol=0, atol=0)


@pytest.mark.slow
def test_evaluate_film_scores_model_and_gray_on_the_films_gray(
    tmp_path: Path,
    ray_local,  # noqa: F811
    capsys,
):
    # the shipped model: an untrained net paints about one ab whatever its input
    model = str(Path(models.__file__).parent / "weights" / "default.safetensors")
    src = tiny_archive(tmp_path / "src", n=8)
    with pytest.raises(ConfigError, match="--film must name one of the films ortho, pan"):
        evaluate_model(str(src), model=model, out=str(tmp_path / "no"), film="sepia")
    assert not (tmp_path / "no").exists()
    runs = {}
    for name, extra in (("clean", []), ("ortho", ["--film", "ortho"])):
        out = tmp_path / name
        argv = ["evaluate", str(src), "--model", model, "--out", str(out), "--split",
                "all", *extra]  # fmt: skip
        with pytest.raises(SystemExit) as exit_code:
            cli.main(argv)
        assert exit_code.value.code == 0
        printed = capsys.readouterr().out
        assert ("film: ortho" in printed) == (name == "ortho")
        runs[name] = json.loads((out / "evaluation.json").read_text())
        assert "film: ortho" in (out / "evaluation.md").read_text() or name == "clean"
    clean, ortho = runs["clean"], runs["ortho"]
    assert (clean["film"], ortho["film"]) == (None, "ortho")
    assert clean["images"] == ortho["images"] == 8
    m_clean, m_ortho = clean["metrics"], ortho["metrics"]
    # the gray baseline has no colour whatever its L: its ab figures and colourfulness are the
    # clean run's; its PSNR is not (it keeps the film's L, not the truth's)
    for name in ("auc", "auc_rebalanced", "auc_set_rebalanced"):
        assert m_ortho[name]["gray"] == m_clean[name]["gray"], name
    for name in ("colorfulness", "colorfulness_delta"):  # the gray's: 0 but rounding (~0.003)
        assert m_ortho[name]["gray"] == pytest.approx(m_clean[name]["gray"], abs=1e-2), name
    assert m_ortho["psnr"]["gray"] < m_clean["psnr"]["gray"] - 0.5
    # the model saw other inputs: other colours
    assert m_ortho["auc"]["model"] != m_clean["auc"]["model"]

    # film, then old-print damage on top: the gray's PSNR moves again, its ab figures do not
    (shard,) = list_shards(str(src), str(tmp_path / "direct"))
    film = evaluate_shard(model, shard, split="all", film="ortho")
    old = evaluate_shard(model, shard, split="all", film="ortho", degrade=True)
    gray_film, gray_old = film["gray"]["metrics"], old["gray"]["metrics"]
    assert gray_film["psnr"] != gray_old["psnr"]
    np.testing.assert_array_equal(film["auc_bin_sums"]["gray"], old["auc_bin_sums"]["gray"])

import math

import numpy as np
import pytest
import torch

from pipeline.imaging.metrics import (
    auc,
    auc_by_true_bin,
    colourfulness,
    image_metrics,
    inverse_prior_weights,
    nearest_bins,
    psnr,
    set_rebalanced_auc,
    ssim,
)


def test_auc_perfect_prediction_is_one():
    ab = np.random.default_rng(0).uniform(-80, 80, (2, 16, 16))
    assert auc(ab, ab) == 1.0


def test_auc_gray_prediction_on_gray_image_is_one_and_known_constant_error():
    zero = np.zeros((2, 8, 8))
    assert auc(zero, zero) == 1.0
    # every pixel off by exactly 30: within t for t = 30..150 -> 121 of 151 thresholds
    truth = np.zeros((2, 8, 8))
    truth[0] = 30.0
    assert math.isclose(auc(zero, truth), 121 / 151)
    # half the pixels perfect, half off by 200 (never within 150): 0.5
    truth2 = np.zeros((2, 2, 2))
    truth2[1, 0] = 200.0
    assert math.isclose(auc(np.zeros((2, 2, 2)), truth2), 0.5)


def test_auc_matches_its_definition_on_random_errors():
    # the definition, threshold by threshold: weighted fraction of pixels with error <= t
    rng = np.random.default_rng(1)
    pred, truth = rng.uniform(-110, 110, (2, 2, 40, 30))
    truth[:, :5] = pred[:, :5] + np.array([3.0, 4.0])[:, None, None]  # errors of exactly 5
    weights = rng.uniform(0.1, 5.0, (40, 30))
    err = np.sqrt(((pred - truth) ** 2).sum(axis=0))
    for w in (np.ones_like(weights), weights):
        curve = [w[err <= t].sum() / w.sum() for t in range(151)]
        assert math.isclose(auc(pred, truth, w), float(np.mean(curve)), rel_tol=1e-12)


def test_rebalanced_auc_weights_pixels():
    zero = np.zeros((2, 1, 2))
    truth = np.zeros((2, 1, 2))
    truth[1, 0, 1] = 200.0  # pixel 1 wrong beyond every threshold
    weights = np.array([[1.0, 3.0]])
    assert math.isclose(auc(zero, truth, weights), 0.25)
    centers = torch.tensor([[0.0, 0.0], [0.0, 200.0]])
    prior = torch.tensor([0.8, 0.2])
    w = inverse_prior_weights(truth, centers, prior)
    np.testing.assert_allclose(w, [[1 / 0.8, 1 / 0.2]], rtol=1e-6)


def test_set_rebalanced_auc_smooths_the_sets_colours_as_the_prior_is_smoothed():
    # three bins: 0 and 1 ten apart (the sigma-5 kernel between them: e^-2), 2 far from both
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [100.0, 0.0]])
    # image 1: 100 pixels of bin 0, each 30 off (pixel AuC 121/151)
    truth_1, pred_1 = np.zeros((2, 10, 10)), np.zeros((2, 10, 10))
    pred_1[1] = 30.0
    # image 2: 50 pixels of bin 0 as image 1's, 50 of bin 2 predicted 170 away (AuC 0)
    truth_2, pred_2 = np.zeros((2, 10, 10)), np.zeros((2, 10, 10))
    pred_2[1, :5] = 30.0
    truth_2[0, 5:], pred_2[0, 5:] = 100.0, -70.0
    sums = auc_by_true_bin(pred_1, truth_1, centers) + auc_by_true_bin(pred_2, truth_2, centers)
    np.testing.assert_array_equal(sums, [[150, 0, 50], [150 * 121, 0, 0]])
    # by hand: p = (3/4, 0, 1/4); smoothed (rows of the kernel normalised), p~ = (3/4 / (1 + e),
    # 3/4 e / (1 + e), 1/4); w_q ~ 1 / (p~_q / 2 + 1 / (2 x 3)); figure = 121/151 x the share
    # of the weight on bin 0's pixels, 150 w_0 / (150 w_0 + 50 w_2)
    e = math.exp(-2.0)
    w0, w2 = 1 / (0.75 / (1 + e) / 2 + 1 / 6), 1 / (0.25 / 2 + 1 / 6)
    expected = 121 / 151 * 150 * w0 / (150 * w0 + 50 * w2)
    assert set_rebalanced_auc(sums, centers) == pytest.approx(expected, rel=1e-6)
    # by 1 / (the raw frequency), each bin's pixels weigh the same: half the figure is bin 2's
    unsmoothed = 121 / 151 * 0.5
    assert abs(expected - unsmoothed) > 0.1  # 0.511 against 0.401
    alone = auc_by_true_bin(pred_1, truth_1, centers)
    assert set_rebalanced_auc(alone, centers) == pytest.approx(121 / 151, rel=1e-6)
    assert set_rebalanced_auc(np.zeros((2, 3), np.int64), centers) is None


def test_set_rebalanced_auc_from_shard_sums_is_the_whole_sets(photos):
    """Per-bin sums of images added shard by shard equal those of the whole set at once (the
    images side by side), and the figure from them is the weighted AuC of every pixel."""
    from skimage.color import rgb2lab

    from models.bins import gamut_bin_centers
    from models.targets import rebalance_weights, smoothed_prior

    centers = gamut_bin_centers()
    rng = np.random.default_rng(3)
    truths, preds = [], []
    for name, width in (("astronaut", 40), ("coffee", 56), ("chelsea", 24), ("coffee", 32)):
        x = int(rng.integers(0, photos[name].shape[1] - width))
        ab = rgb2lab(photos[name][100:148, x : x + width]).transpose(2, 0, 1)[1:]
        truths.append(ab)
        preds.append(0.4 * ab + rng.normal(0, 5, ab.shape))  # dull: the rarer, the further off
    per_image = [auc_by_true_bin(p, t, centers) for p, t in zip(preds, truths, strict=True)]
    shards = [per_image[0] + per_image[1], per_image[2], per_image[3]]
    merged = np.sum(shards, axis=0)
    truth_all, pred_all = np.concatenate(truths, axis=2), np.concatenate(preds, axis=2)
    np.testing.assert_array_equal(merged, auc_by_true_bin(pred_all, truth_all, centers))
    figure = set_rebalanced_auc(merged, centers)
    assert figure == set_rebalanced_auc(auc_by_true_bin(pred_all, truth_all, centers), centers)
    # the definition: every pixel of the set weighted by w of its true bin, one AuC
    weights = rebalance_weights(smoothed_prior(torch.from_numpy(merged[0]), centers))
    pixel_weights = weights.double().numpy()[nearest_bins(truth_all, centers.numpy())]
    assert figure == pytest.approx(auc(pred_all, truth_all, pixel_weights), rel=1e-9)
    assert figure != pytest.approx(auc(pred_all, truth_all), rel=1e-3)  # it reweighs


def test_psnr_known_value_and_ssim_identity():
    a = np.zeros((8, 8, 3))
    b = np.full((8, 8, 3), 0.1)  # MSE 0.01 -> PSNR 20 dB
    assert math.isclose(psnr(b, a), 20.0, rel_tol=1e-9)
    img = np.random.default_rng(0).random((32, 32, 3))
    assert math.isclose(ssim(img, img), 1.0)


def test_colourfulness_gray_is_zero_and_known_value():
    assert colourfulness(np.full((4, 4, 3), 0.5)) == 0.0
    red = np.zeros((4, 4, 3))
    red[..., 0] = 1.0  # rg = 255, yb = 127.5, no spread: M = 0.3 * sqrt(255^2 + 127.5^2)
    assert math.isclose(colourfulness(red), 0.3 * math.hypot(255, 127.5))


def test_image_metrics_with_and_without_ground_truth(photos):
    rgb = photos["chelsea"][:64, :64] / 255.0
    ab = np.zeros((2, 64, 64))
    only = image_metrics(rgb, ab)
    assert set(only) == {"colorfulness"}
    full = image_metrics(rgb, ab, rgb, ab, torch.zeros(1, 2), torch.ones(1))
    assert (
        full["auc"] == 1.0 and full["auc_rebalanced"] == 1.0 and full["ssim"] == pytest.approx(1.0)
    )
    assert full["colorfulness_delta"] == 0.0 and math.isinf(full["psnr"])


def test_metrics_on_a_downscaled_copy(photos):
    rgb = photos["astronaut"] / 255.0  # 512 x 512
    ab = np.random.default_rng(0).uniform(-50, 50, (2, 512, 512))
    full = image_metrics(rgb, ab, rgb, ab, torch.zeros(1, 2), torch.ones(1))
    small = image_metrics(rgb, ab, rgb, ab, torch.zeros(1, 2), torch.ones(1), max_side=128)
    assert small["auc"] == 1.0 and small["ssim"] == pytest.approx(1.0)
    assert small["colorfulness"] == pytest.approx(full["colorfulness"], rel=0.05)
    # on a real photo (smooth colour), the gray baseline scores about the same either way
    from pipeline.imaging.color import rgb_to_lab

    true_ab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1).float())[1:].numpy()
    gray = np.full_like(rgb, 0.5)
    a = image_metrics(gray, true_ab * 0, rgb, true_ab, max_side=0)
    b = image_metrics(gray, true_ab * 0, rgb, true_ab, max_side=256)
    assert b["auc"] == pytest.approx(a["auc"], abs=0.03)


@pytest.mark.parametrize("shape", [(512, 512), (300, 451), (7, 9)])
def test_ssim_matches_skimage(photos, shape) -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    h, w = shape
    true = (photos["astronaut"][:h, :w] / 255.0).astype(np.float32)
    for pred in (
        np.clip(true + rng.normal(0, 0.05, true.shape), 0, 1).astype(np.float32),
        true[::-1].copy(),
        true,
    ):
        expected = structural_similarity(true, pred, channel_axis=-1, data_range=1.0)
        assert ssim(pred, true) == pytest.approx(float(expected), abs=1e-5)


def test_ssim_needs_a_window() -> None:
    with pytest.raises(ValueError, match="7x7"):
        ssim(np.zeros((6, 20, 3)), np.zeros((6, 20, 3)))


def test_nearest_bins_as_the_models_find_them() -> None:
    """The metrics' numba lookup picks the bin `models.bins.nearest_bin` picks, for ab inside
    and outside the gamut's bins, and for centres off the grid."""
    from models.bins import gamut_bin_centers, nearest_bin

    ab = np.random.default_rng(0).uniform(-130, 130, (2, 60, 70)).astype(np.float32)
    on_grid = gamut_bin_centers()
    off_grid = on_grid[::7] + 3.5
    for centers in (on_grid, off_grid):
        expected = nearest_bin(torch.from_numpy(ab)[None], centers)[0].numpy()
        np.testing.assert_array_equal(nearest_bins(ab, centers.numpy()), expected)


def test_spearman_of_uncertainty_against_error_on_known_pairs() -> None:
    from pipeline.training.evaluate import uncertainty_vs_error

    rising = [(0.1, 2.0), (0.2, 3.0), (0.3, 10.0), (0.4, 11.0), (0.9, 40.0)]
    result = uncertainty_vs_error(rising)
    assert result["images"] == 5 and result["spearman"] == pytest.approx(1.0)
    falling = [(u, -e) for u, e in rising]
    assert uncertainty_vs_error(falling)["spearman"] == pytest.approx(-1.0)
    # ranks of error (2, 1, 4, 3) against (1, 2, 3, 4): 1 - 6 * 4 / (4 * 15) = 0.6
    swapped = [(0.1, 5.0), (0.2, 1.0), (0.3, 9.0), (0.4, 7.0)]
    assert uncertainty_vs_error(swapped)["spearman"] == pytest.approx(0.6)
    # monotone but not linear: ranks only (Pearson would not give 1)
    steep = [(u, math.exp(20 * u)) for u, _ in rising]
    assert uncertainty_vs_error(steep)["spearman"] == pytest.approx(1.0)
    ordered = [(0.1, 3.0), (0.2, 1.0), (0.3, 2.0)]  # 1 - 6 * (4 + 1 + 1) / 24 = -0.5
    assert uncertainty_vs_error(ordered)["spearman"] == pytest.approx(-0.5)
    assert uncertainty_vs_error([(0.1, 1.0), (0.2, 2.0)]) == {"spearman": None, "images": 2}
    flat = [(0.5, 1.0), (0.5, 2.0), (0.5, 3.0)]  # no spread in uncertainty: undefined
    assert uncertainty_vs_error(flat) == {"spearman": None, "images": 3}

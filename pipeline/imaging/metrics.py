"""Per-image quality metrics; none need downloaded weights.

AuC: the paper's "raw accuracy" curve: fraction of pixels whose ab error (L2) is within t, for
t = 0, 1, ..., 150, and the area under it normalised to [0, 1]. The rebalanced AuC weights
each pixel by the inverse prior of its true bin, so rare colours count as much as common ones.
The set-rebalanced AuC weights them by the evaluated set's own colours, smoothed and mixed
with the uniform as the loss's weights are (`set_rebalanced_auc`, from per-bin sums).
PSNR is scikit-image's and SSIM its definition (7 x 7 uniform window, sample covariance)
in numba box sums, on RGB in [0, 1]. Colourfulness is Hasler and Suesstrunk
(2003) on 0-255 RGB.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

from models.bins import GRID
from models.targets import rebalance_weights, smoothed_prior
from pipeline.imaging.lab_cpu import opponent_sums, rgbx_of
from pipeline.imaging.resize_cpu import shrink

AUC_THRESHOLDS = np.arange(0, 151, dtype=np.float64)


def auc(ab_pred: np.ndarray, ab_true: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
    """ab arrays (2, H, W) -> area under the cumulative ab-error curve, in [0, 1]."""
    return auc_of_steps(error_steps(ab_pred, ab_true), pixel_weights)


def error_steps(ab_pred: np.ndarray, ab_true: np.ndarray) -> np.ndarray:
    """Per pixel, ceil of the ab error (L2, float64), capped at the number of thresholds.

    The thresholds are the integers 0..150, and err <= t exactly when ceil(err) <= t: a
    histogram of these steps gives the whole curve in one pass (no sort)."""
    pred = np.ascontiguousarray(ab_pred).reshape(2, -1)  # float32 or float64, as they come
    true = np.ascontiguousarray(ab_true).reshape(2, -1)
    steps = np.empty(pred.shape[1], np.int64)
    _error_steps(pred[0], pred[1], true[0], true[1], len(AUC_THRESHOLDS), steps)
    return steps


@numba.njit(nogil=True, cache=True)
def _error_steps(pred_a, pred_b, true_a, true_b, last, out):
    for p in range(out.shape[0]):
        da = np.float64(pred_a[p]) - np.float64(true_a[p])
        db = np.float64(pred_b[p]) - np.float64(true_b[p])
        out[p] = min(np.ceil(np.sqrt(da * da + db * db)), last)


def auc_of_steps(steps: np.ndarray, pixel_weights: np.ndarray | None = None) -> float:
    """AuC from `error_steps`, each pixel counted with its weight (default 1)."""
    last = len(AUC_THRESHOLDS)
    w = None if pixel_weights is None else pixel_weights.astype(np.float64).ravel()
    mass = np.bincount(steps, weights=w, minlength=last + 1)
    within = np.cumsum(mass)[:last] / mass.sum()
    return float(within.mean())


def auc_by_true_bin(
    ab_pred: np.ndarray, ab_true: np.ndarray, centers: torch.Tensor, max_side: int = 0
) -> np.ndarray:
    """(2, Q) int64: per bin of the true ab, its pixel count and the sum over those pixels of
    the thresholds each meets (151 - step: a pixel's own AuC times 151, so that summed and
    divided by 151 x the count they give `auc`). Integers: the sums of a set's images, added
    in any order or shard by shard, are exact, and they are all `set_rebalanced_auc` needs."""
    if max_side > 0 and max(ab_true.shape[1:]) > max_side:
        ab_pred, ab_true = downscale(max_side, ab_pred, ab_true)
    last = len(AUC_THRESHOLDS)
    steps = error_steps(ab_pred, ab_true)
    bins = nearest_bins(ab_true, centers.cpu().numpy()).ravel()
    q = centers.shape[0]
    met = np.bincount(bins, last - steps, minlength=q)  # float64 of integers < 2^53: exact
    return np.stack([np.bincount(bins, minlength=q), met.astype(np.int64)])


def set_rebalanced_auc(
    sums: np.ndarray, centers: torch.Tensor | np.ndarray, sigma: float = 5.0, lam: float = 0.5
) -> float | None:
    """The AuC of a set's pixels, each weighted by w(q) of its true bin q, with w the paper's
    rebalancing made from the set's own colours instead of a model's training prior: p~ = the
    set's bin frequencies smoothed by a Gaussian over ab (`sigma`, as `smoothed_prior` smooths
    a model's prior), w proportional to ((1 - lam) p~ + lam / Q)^-1, normalised so that
    E_p~[w] = 1 (`rebalance_weights`, lam = 1/2 as in the loss). The mixing with the uniform
    keeps every weight under Q / lam (2Q) times the mean, so a pixel of a rare colour weighs as
    2Q average pixels at most; under 1 / (raw frequency) every bin's pixels together weigh as
    much as the commonest colour's, however few they are.

    `sums`: `auc_by_true_bin` summed over the set's images (any split into shards: the sums
    add), on the bins `centers`. Pooled over the set's pixels,
    sum_q w_q met_q / (151 sum_q w_q count_q), so the figure is a function of these sums
    alone and the same however the set is split. None for a set of no pixels."""
    counts, met = np.asarray(sums, dtype=np.int64)
    if counts.sum() == 0:
        return None
    prior = smoothed_prior(torch.from_numpy(counts), torch.as_tensor(centers), sigma)
    weights = rebalance_weights(prior, lam).double().numpy()
    return float((weights @ met) / (len(AUC_THRESHOLDS) * (weights @ counts)))


def inverse_prior_weights(
    ab_true: np.ndarray, centers: torch.Tensor, prior: torch.Tensor
) -> np.ndarray:
    """Per-pixel weight 1 / p(bin of the true ab), (H, W)."""
    inverse = (1.0 / prior.cpu().clamp_min(1e-8)).numpy()
    return inverse[nearest_bins(ab_true, centers.cpu().numpy())]


def nearest_bins(ab: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """ab (2, H, W), centres (Q, 2) -> index of each pixel's nearest centre (H, W), as
    `models.bins.nearest_bin` finds it (a grid table where the centres lie on the grid, every
    centre for the rest) in one numba pass: 10x its torch ops on a CPU."""
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    radius = int(np.abs(centers).max() // GRID) + 1
    side = 2 * radius + 1
    table = np.full(side * side, -1, np.int64)
    if np.all(np.remainder(centers, GRID) == 0):
        cells = np.rint(centers / GRID).astype(np.int64) + radius
        table[cells[:, 0] * side + cells[:, 1]] = np.arange(len(centers))
    flat = np.ascontiguousarray(ab, dtype=np.float32).reshape(2, -1)
    out = np.empty(flat.shape[1], np.int64)
    _nearest_bins(flat[0], flat[1], table, radius, centers, out)
    return out.reshape(ab.shape[1:])


@numba.njit(nogil=True, cache=True)
def _nearest_bins(a, b, table, radius, centers, out):
    side = 2 * radius + 1
    for p in range(a.shape[0]):
        i = int(np.rint(a[p] / np.float32(GRID))) + radius
        j = int(np.rint(b[p] / np.float32(GRID))) + radius
        q = table[i * side + j] if 0 <= i < side and 0 <= j < side else -1
        if q < 0:  # off the centres' grid: the nearest of all (the first of equals)
            best = np.inf
            for c in range(centers.shape[0]):
                d = (a[p] - centers[c, 0]) ** 2 + (b[p] - centers[c, 1]) ** 2
                if d < best:
                    best, q = d, c
        out[p] = q


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's M = sigma_rgyb + 0.3 mu_rgyb on RGB (H, W, 3): float in [0, 1],
    uint8 or uint16 (computed on the 0-255 scale), or a view of RGBX pixels (read in place)."""
    sums, pixels = opponent_sums(rgb)
    return colourfulness_of_sums(
        sums, pixels, np.iinfo(rgb.dtype).max if rgb.dtype.kind == "u" else 1.0
    )


def colourfulness_of_sums(sums: np.ndarray, pixels: int, top: float) -> float:
    """M from `lab_cpu.opponent_sums` of `pixels` pixels whose full scale is `top` (255 for
    8 bits); `join_lab` makes these sums of its output as it writes it."""
    s_rg, s_rg2, s_yb, s_yb2 = (float(v) for v in sums)
    scale = 255.0 / top
    mean_rg, mean_yb = scale * s_rg / pixels, 0.5 * scale * s_yb / pixels
    var_rg = scale**2 * s_rg2 / pixels - mean_rg**2
    var_yb = 0.25 * scale**2 * s_yb2 / pixels - mean_yb**2
    return float(np.sqrt(max(var_rg, 0.0) + max(var_yb, 0.0)) + 0.3 * np.hypot(mean_rg, mean_yb))


def psnr(rgb_pred: np.ndarray, rgb_true: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(rgb_true, rgb_pred, data_range=1.0))


SSIM_WINDOW = 7  # skimage's default: a uniform 7 x 7 window, sample covariance


@numba.njit(nogil=True, fastmath=True, cache=True)
def _add(row, out):
    for j in range(out.shape[0]):
        out[j] += row[j]


@numba.njit(nogil=True, fastmath=True, cache=True)
def _slide(entering, leaving, out):
    for j in range(out.shape[0]):
        out[j] += entering[j] - leaving[j]


@numba.njit(nogil=True, fastmath=True, cache=True)
def _add_product(a, b, out):
    for j in range(out.shape[0]):
        out[j] += a[j] * b[j]


@numba.njit(nogil=True, fastmath=True, cache=True)
def _box_rows(image, out):
    """Sums of SSIM_WINDOW horizontal neighbours: (H, W) -> (H, W - window + 1)."""
    width = out.shape[1]
    for i in range(image.shape[0]):
        out[i] = 0.0
        for k in range(SSIM_WINDOW):
            _add(image[i, k : k + width], out[i])


@numba.njit(nogil=True, fastmath=True, cache=True)
def _box_product_rows(x, y, out):
    """As `_box_rows` of x * y, the products made as they are summed (no product image)."""
    width = out.shape[1]
    for i in range(x.shape[0]):
        out[i] = 0.0
        for k in range(SSIM_WINDOW):
            _add_product(x[i, k : k + width], y[i, k : k + width], out[i])


@numba.njit(nogil=True, fastmath=True, cache=True)
def _ssim_row(sx, sy, sxx, syy, sxy, c1, c2):
    """Sum of SSIM over one row of windows, from their x, y, x^2, y^2 and xy sums."""
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1.0)
    total = 0.0
    for j in range(sx.shape[0]):
        ux, uy = sx[j] / n, sy[j] / n
        vx = cov_norm * (sxx[j] / n - ux * ux)
        vy = cov_norm * (syy[j] / n - uy * uy)
        vxy = cov_norm * (sxy[j] / n - ux * uy)
        total += ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return total


@numba.njit(nogil=True, fastmath=True, cache=True)
def _ssim_mean(x, y, c1, c2):
    """Mean SSIM over the valid windows of two (H, W) float64 images: box sums along rows,
    then a window sliding down them (1-D loops, which LLVM vectorises)."""
    height, width = x.shape[0], x.shape[1] - SSIM_WINDOW + 1
    rows = np.empty((5, height, width))
    _box_rows(x, rows[0])
    _box_rows(y, rows[1])
    _box_product_rows(x, x, rows[2])
    _box_product_rows(y, y, rows[3])
    _box_product_rows(x, y, rows[4])
    window = np.zeros((5, width))
    for m in range(5):
        for k in range(SSIM_WINDOW):
            _add(rows[m, k], window[m])
    total = 0.0
    for i in range(height - SSIM_WINDOW + 1):
        if i > 0:  # slide down one row: add the row entering, take off the one leaving
            for m in range(5):
                _slide(rows[m, i + SSIM_WINDOW - 1], rows[m, i - 1], window[m])
        total += _ssim_row(window[0], window[1], window[2], window[3], window[4], c1, c2)
    return total / ((height - SSIM_WINDOW + 1) * width)


def ssim(rgb_pred: np.ndarray, rgb_true: np.ndarray) -> float:
    """Mean SSIM over RGB channels, as skimage's `structural_similarity(rgb_true, rgb_pred,
    channel_axis=-1, data_range=1.0)` (7 x 7 uniform window, sample covariance, borders
    cropped), in float64 box sums (numba): 3-4x faster than skimage, equal within 1e-5."""
    height, width = rgb_true.shape[:2]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {width}x{height}"
        )
    c1, c2 = 0.01**2, 0.03**2  # (K * data_range)^2 with skimage's K1, K2
    scores = [
        _ssim_mean(
            np.ascontiguousarray(rgb_true[..., c], dtype=np.float64),
            np.ascontiguousarray(rgb_pred[..., c], dtype=np.float64),
            c1,
            c2,
        )
        for c in range(rgb_true.shape[2])
    ]
    return float(np.mean(scores))


def unit_float(rgb: np.ndarray) -> np.ndarray:
    """RGB as float in [0, 1], from float, uint8 or uint16."""
    if rgb.dtype == np.uint8 or rgb.dtype == np.uint16:
        return np.multiply(rgb, np.float32(1 / np.iinfo(rgb.dtype).max), dtype=np.float32)
    return rgb


def downscale(max_side: int, *arrays: np.ndarray | None) -> list[Any]:
    """Area-downscale (H, W, 3) or (2, H, W) arrays so the longer side is `max_side`, as float32
    (RGB in [0, 1]), by `resize_cpu.shrink` (torch's antialiased bilinear filter).

    8- and 16-bit RGB are read as they are (no float copy at full size; 8-bit RGBX, as
    `join_lab` makes it, in place) and not rounded after the filter.
    """
    out: list[Any] = []
    for arr in arrays:
        if arr is None:
            out.append(None)
            continue
        channels_last = arr.shape[-1] == 3 and arr.ndim == 3 and arr.shape[0] != 2
        h, w = arr.shape[:2] if channels_last else arr.shape[-2:]
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if not channels_last:
            out.append(np.stack([shrink(plane, size) for plane in arr]))
            continue
        rgbx = rgbx_of(arr)
        small = shrink(arr if rgbx is None else rgbx, size)[..., :3]
        if arr.dtype.kind == "u":
            small = small * np.float32(1 / np.iinfo(arr.dtype).max)
        out.append(small)
    return out


def image_metrics(
    rgb_pred: np.ndarray,
    ab_pred: np.ndarray | None,
    rgb_true: np.ndarray | None = None,
    ab_true: np.ndarray | None = None,
    centers: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    max_side: int = 0,
    colourfulness_pred: float | None = None,
) -> dict[str, float]:
    """All metrics for one image. Ground-truth metrics only where ground truth is given.
    `rgb_pred` is float in [0, 1], uint8 or uint16; `ab_pred` may be None without ground truth.

    `max_side` > 0 scores PSNR, SSIM and AuC on a copy downscaled (area-averaged) so that its
    longer side is at most that: colour is predicted at 1/4 of 256 px, so they barely move,
    while SSIM on a 12-megapixel scan would cost more than the colorization itself.
    Colourfulness (two sums per pixel) is always taken at full size: one pass over the image
    costs less than making the copy, and none when `colourfulness_pred` comes with the image
    (`colorize.finish` takes it as it writes the pixels).
    """
    if colourfulness_pred is None:
        colourfulness_pred = colourfulness(rgb_pred)
    out = {"colorfulness": colourfulness_pred}
    if rgb_true is None or ab_true is None or ab_pred is None:
        return out
    out["colorfulness_delta"] = out["colorfulness"] - colourfulness(rgb_true)
    if max_side > 0 and max(rgb_pred.shape[:2]) > max_side:
        rgb_pred, ab_pred, rgb_true, ab_true = downscale(
            max_side, rgb_pred, ab_pred, rgb_true, ab_true
        )
    rgb_pred = unit_float(rgb_pred)
    out["psnr"] = psnr(rgb_pred, rgb_true)
    out["ssim"] = ssim(rgb_pred, rgb_true)
    steps = error_steps(ab_pred, ab_true)
    out["auc"] = auc_of_steps(steps)
    if centers is not None and prior is not None:
        out["auc_rebalanced"] = auc_of_steps(steps, inverse_prior_weights(ab_true, centers, prior))
    return out

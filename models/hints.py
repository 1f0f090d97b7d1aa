"""Colour hints (Zhang, Zhu, Isola et al., SIGGRAPH 2017): a few points where someone says
what the colour is, given to a hint-aware network beside the L channel.

A hint is a point (x, y as shares of the image's width and height, so that it holds at any
resolution), an ab colour, and a radius as a share of the short side. The network sees hints
as three planes on its output grid (1/4 of its working size): a/110, b/110 and a mask that is
1 where a hint is. On that grid every hint covers at least the cell its point falls in.

Training simulates them from the true colours (`simulated_planes`): no hints on a share of the
crops (so that the model stays an automatic colorizer), else a geometric number of points,
each a small patch of the true ab at a random place, its colour the patch's mean, as the
paper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

AB_SCALE = 110.0  # ab / AB_SCALE: the planes' a and b in about [-1, 1]
CHANNELS = 3  # a, b, mask
DEFAULT_RADIUS = 0.01  # a share of the short side: one cell of a 256 working size's 64x64 grid
MAX_POINTS = 32  # simulated points per crop, at most


@dataclass(frozen=True)
class Hint:
    x: float  # [0, 1] of the width
    y: float  # [0, 1] of the height
    a: float
    b: float
    r: float = DEFAULT_RADIUS  # share of the short side


def hint_planes(hints: Sequence[Hint], height: int, width: int) -> Tensor:
    """Hints -> (3, height, width) planes on the network's output grid: a/110, b/110, mask.
    A hint covers the cells whose centres lie within its radius, and always its own cell;
    where hints overlap, the later one counts."""
    planes = torch.zeros(CHANNELS, height, width)
    if not hints:
        return planes
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    for hint in hints:
        cy, cx = hint.y * height, hint.x * width
        radius = hint.r * min(height, width)
        inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        inside[min(int(cy), height - 1), min(int(cx), width - 1)] = True
        planes[0][inside] = hint.a / AB_SCALE
        planes[1][inside] = hint.b / AB_SCALE
        planes[2][inside] = 1.0
    return planes


def no_hints(batch: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """The planes of a batch without hints (what a hint-aware network sees on its own)."""
    return torch.zeros(batch, CHANNELS, height, width, device=device)


def simulated_planes(
    ab: Tensor, rng: np.random.Generator, share: float, mean_points: float = 8.0
) -> Tensor:
    """Training's hints from the true ab at the output resolution (N, 2, h, w): a `share` of
    the crops get a geometric number of points (mean `mean_points`, at most MAX_POINTS), each
    a square patch of 1-3 cells at a uniform place holding the patch's mean true ab; the rest
    get none."""
    n, _, h, w = ab.shape
    planes = torch.zeros(n, CHANNELS, h, w)
    for i in range(n):
        if rng.random() >= share:
            continue
        count = min(MAX_POINTS, int(rng.geometric(1.0 / mean_points)))
        for _ in range(count):
            size = int(rng.integers(1, 4))
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            patch = ab[i, :, y : y + size, x : x + size]
            planes[i, :2, y : y + size, x : x + size] = patch.mean(dim=(1, 2))[:, None, None]
            planes[i, 2, y : y + size, x : x + size] = 1.0
        planes[i, :2] /= AB_SCALE
    return planes


SPREAD = 0.1  # a hint's reach: a Gaussian of this share of the grid's short side...
TONE = 0.08  # ...and of this difference of centred L (8 L units): it stops at edges


def propagate(
    planes: Tensor,
    lightness: Tensor,
    spread: float = SPREAD,
    tone: float = TONE,
    sharpness: float = 1.0,
) -> Tensor:
    """Sparse hint planes (N, 3, h, w) and the net's centred L (N, 1, H, W) -> dense planes:
    every cell's hint colour (the hints' ab averaged with weights falling with distance and
    with difference of L from the hint's cell, an edge-aware spread) and its confidence (the
    largest weight: 1 on a hint, 0 far from any or across an edge). Cells without a hint near
    get ab 0 and confidence 0: a net given no hints sees zeros, as in training. `spread` and
    `tone`: the Gaussians' widths, as SPREAD's and TONE's; `sharpness` > 1 averages the colours
    by the weights to that power: near a hint its own colour, mixes only between hints."""
    n, _, h, w = planes.shape
    tones = F.adaptive_avg_pool2d(lightness, (h, w)).flatten(1)  # (N, h*w)
    rows = torch.arange(h, device=planes.device, dtype=planes.dtype)
    cols = torch.arange(w, device=planes.device, dtype=planes.dtype)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    reach = spread * min(h, w)
    out = torch.zeros_like(planes)
    for i in range(n):
        hinted = torch.nonzero(planes[i, 2].flatten() > 0).flatten()
        if hinted.numel() == 0:
            continue
        far = ((ys[None] - ys[hinted, None]) ** 2 + (xs[None] - xs[hinted, None]) ** 2) / reach**2
        unlike = (tones[i][None] - tones[i, hinted, None]) ** 2 / tone**2
        weight = torch.exp(-0.5 * (far + unlike))  # (K, h*w)
        ab = planes[i, :2].flatten(1)[:, hinted]  # (2, K)
        mixing = weight**sharpness
        total = mixing.sum(0).clamp(min=1e-12)
        out[i, :2] = (ab @ mixing / total).view(2, h, w)
        out[i, 2] = weight.amax(0).view(h, w)
    return out


# How far a hint-aware net's answer to the hints is taken (`reach`): wider than the colour's own
# spread, since the net moves a whole region it sees, but not over the whole image, where one
# hint made the net's colours stronger everywhere and so more often wrong (docs/training.md)
REACH_SPREAD = 0.6
REACH_TONE = 0.16


def reach(planes: Tensor, lightness: Tensor) -> Tensor:
    """Sparse hint planes (N, 3, h, w) and the net's centred L -> (N, 1, h, w) in [0, 1]: how
    much of each cell's output is the hinted net's, the rest being its automatic answer
    (`Colorizer.logits`). 1 on a hint, falling with distance and across edges, 0 far from
    every hint: a hint on a cup leaves the table as it was."""
    return propagate(planes.float(), lightness.float(), REACH_SPREAD, REACH_TONE)[:, 2:3]


# the decoded ab is pulled to the hint field by confidence ** this (1: the best of 1, 2, 4 on
# group-1's held-out sources, docs/training.md)
BLEND_POWER = 1.0
PULL_SPREAD, PULL_TONE = 0.2, 0.16  # and wider than the net's spread (docs/training.md),
PULL_SHARPNESS = 4.0  # so each hint's colour holds near it, where another's reaches too


def honoured(ab: Tensor, planes: Tensor, lightness: Tensor) -> Tensor:
    """The decoded ab (N, 2, h, w) pulled towards the hints' spread colour (`propagate`) in
    proportion to its confidence to a power: on a hint's cell, the hint's colour exactly;
    away from it, or across an edge, the network's. What the archivist said stays said, even
    for a colour the network finds unlikely."""
    planes = planes.float()
    dense = propagate(planes, lightness.float(), PULL_SPREAD, PULL_TONE, PULL_SHARPNESS)
    # a hint's own cells keep its colour, not a mix with other hints the wide spread reaches
    own = planes[:, 2:3] > 0
    colour = torch.where(own, planes[:, :2], dense[:, :2]) * AB_SCALE
    weight = torch.where(own, 1.0, dense[:, 2:3] ** BLEND_POWER)
    return ab + weight * (colour - ab)


def logit_bias(dense: Tensor, centers: Tensor, width: float = 10.0) -> Tensor:
    """Dense planes (N, 3, h, w) -> (N, Q, h, w): the hint colour's log-kernel over the ab bins
    (a Gaussian of `width` ab units around it), times the confidence: added to the logits (by
    a learned gain), it puts the mass of a confident cell on its hint's bins."""
    ab = dense[:, :2] * AB_SCALE  # (N, 2, h, w)
    d2 = ((centers[None, :, :, None, None] - ab[:, None]) ** 2).sum(2)  # (N, Q, h, w)
    return -0.5 * d2 / width**2 * dense[:, 2:3]

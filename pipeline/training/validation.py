"""Validation in the training loop: the shipped weights scored on prepared validation photos.

The first `max_photos` photos of the prepared validation split (in shard and row order, the
same on every run) are colorized with the same code path as `evaluate` (`predict_low`,
`finish`) and scored with `metrics.image_metrics` against their true colours; the mean of each
metric over the photos is one point of the validation curve. The run keeps the checkpoint of
the best `SELECT` score (higher is better).
"""

from __future__ import annotations

import math

import numpy as np
import torch

import models
from pipeline.colorize.predict import finish, predict_low
from pipeline.imaging.images import decode_image
from pipeline.imaging.metrics import image_metrics
from pipeline.training.prepared import Block, read_block

SELECT = "auc_rebalanced"  # the metric the best checkpoint is chosen by (as the card's first)


def validation_photos(blocks: list[Block], max_photos: int) -> list[bytes]:
    """The prepared squares (PNG) of the first `max_photos` validation photos."""
    out: list[bytes] = []
    for block in blocks:
        if len(out) >= max_photos:
            break
        out += read_block(block).column("image").to_pylist()[: max_photos - len(out)]
    return out


@torch.inference_mode()
def score(
    colorizer: models.Colorizer, photos: list[bytes], batch_size: int = 8, max_side: int = 512
) -> dict[str, float]:
    """Mean of each metric over the photos (non-finite values left out, as the reports do)."""
    sums: dict[str, list[float]] = {}
    for i in range(0, len(photos), batch_size):
        decoded = [decode_image(p) for p in photos[i : i + batch_size]]
        ab_low, _ = predict_low(colorizer, [d.lightness for d in decoded])
        for dec, ab_one in zip(decoded, ab_low, strict=True):
            rgb, ab, _ = finish(dec.lightness, ab_one)
            scores = image_metrics(
                rgb, ab, dec.rgb, dec.ab, colorizer.centers, colorizer.prior, max_side
            )
            for name, value in scores.items():
                if value is not None and math.isfinite(value):
                    sums.setdefault(name, []).append(float(value))
    return {name: float(np.mean(values)) for name, values in sorted(sums.items())}

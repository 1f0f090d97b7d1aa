"""resize_cpu.shrink against torch's antialiased bilinear interpolate, which it replaces on CPUs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.resize_cpu import shrink


@pytest.mark.parametrize(
    ("shape", "size"),
    [((1024, 1024), (256, 256)), ((700, 1024), (256, 256)), ((3000, 4000), (256, 256)),
     ((513, 257), (224, 224)), ((200, 130), (256, 256)), ((256, 256), (256, 256)),
     ((1, 5), (3, 2))],
)  # fmt: skip
def test_shrink_matches_torch(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    lightness = (rng.random(shape) * 100).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(lightness)[None, None], size=size, mode="bilinear", antialias=True
    )[0, 0].numpy()
    assert np.abs(shrink(lightness, size) - expected).max() < 2e-3  # L in [0, 100]


def test_shrink_of_a_real_photo_keeps_its_mean(photos: dict[str, np.ndarray]) -> None:
    gray = photos["astronaut"].mean(axis=2).astype(np.float32)  # 512 x 512
    small = shrink(gray, (128, 128))
    assert small.shape == (128, 128)
    assert abs(float(small.mean()) - float(gray.mean())) < 0.5

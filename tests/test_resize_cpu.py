"""resize_cpu.shrink against torch's antialiased bilinear interpolate, which it replaces on CPUs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.imaging.resize_cpu import shrink


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


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [3, 4])
def test_shrink_of_rgb_and_rgbx_pixels(channels: int, dtype: type) -> None:
    """Interleaved pixels (the metrics' copies of RGB outputs, 8-bit RGBX in place) filter each
    channel as torch does its planes; integers keep their levels, unrounded."""
    rng = np.random.default_rng(1)
    top = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    image = (rng.random((300, 451, channels)) * top).astype(dtype)
    expected = (
        F.interpolate(
            torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None],
            size=(128, 192),
            mode="bilinear",
            antialias=True,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    small = shrink(image, (128, 192))
    assert small.shape == (128, 192, channels) and small.dtype == np.float32
    assert np.abs(small - expected).max() <= 2e-5 * top  # float32 rounding


def test_shrink_names_the_shapes_it_takes() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        shrink(np.zeros((8, 8, 2), np.float32), (4, 4))

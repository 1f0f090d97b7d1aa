"""The CPU Lab kernels agree with scikit-image and with the torch path they replace."""

import numpy as np
import pytest
import torch
from skimage import color, data

from models.lab import lab_to_rgb as torch_lab_to_rgb
from pipeline.colorize.predict import upsample_ab
from pipeline.imaging import lab_cpu


def _all_8bit_colours() -> np.ndarray:
    """Every 8-bit sRGB colour whose channels are multiples of 3 (86^3), plus the extremes."""
    levels = np.r_[np.arange(0, 256, 3), 255].astype(np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return np.stack([r, g, b], axis=-1).reshape(-1, 87, 3)


@pytest.mark.parametrize("rgb", [_all_8bit_colours(), data.astronaut(), data.coffee()])
def test_rgb8_to_lab_matches_skimage(rgb: np.ndarray) -> None:
    lightness, ab = lab_cpu.rgb8_to_lab(rgb)
    ref = color.rgb2lab(rgb.astype(np.float64) / 255.0)
    assert lightness.shape == rgb.shape[:2] and ab.shape == (2, *rgb.shape[:2])
    assert np.abs(lightness - ref[..., 0]).max() <= 1e-3
    assert np.abs(ab - ref[..., 1:].transpose(2, 0, 1)).max() <= 1e-3


def test_lab_to_rgb_matches_skimage_in_and_out_of_gamut() -> None:
    rng = np.random.default_rng(0)
    lab = np.stack(
        [rng.uniform(0, 100, (300, 200)), rng.uniform(-128, 127, (300, 200)),
         rng.uniform(-128, 127, (300, 200))]
    ).astype(np.float32)  # fmt: skip
    ref = color.lab2rgb(lab.transpose(1, 2, 0).astype(np.float64))
    rgb = lab_cpu.lab_to_rgb(lab[0], lab[1:])
    assert rgb.dtype == np.float32 and np.abs(rgb - ref).max() <= 1e-3
    rgb8 = lab_cpu.lab_to_rgb(lab[0], lab[1:], np.uint8)
    assert np.abs(rgb8.astype(int) - np.round(ref * 255)).max() <= 1
    rgb16 = lab_cpu.lab_to_rgb(lab[0], lab[1:], np.uint16)
    assert np.abs(rgb16.astype(int) - np.round(ref * 65535)).max() <= 4


@pytest.mark.parametrize("size", [(1000, 1500), (97, 61), (8, 8), (3, 700)])
def test_join_lab_matches_the_torch_path(size: tuple[int, int]) -> None:
    """Upsampling inside the pass gives torch's bilinear ab, and the same RGB, any shape."""
    rng = np.random.default_rng(1)
    lightness = rng.uniform(0, 100, size).astype(np.float32)
    ab_low = torch.from_numpy(rng.uniform(-70, 70, (2, 64, 48)).astype(np.float32))
    ab_ref = upsample_ab(ab_low, size)
    rgb_ref = torch_lab_to_rgb(torch.cat([torch.from_numpy(lightness)[None], ab_ref]))
    rgb_ref_np = rgb_ref.permute(1, 2, 0).numpy()
    rgb, ab = lab_cpu.join_lab(lightness, ab_low.numpy(), np.float32, keep_ab=True)
    assert ab is not None and np.abs(ab - ab_ref.numpy()).max() <= 1e-3
    assert np.abs(rgb - rgb_ref_np).max() <= 1e-4
    rgb8, no_ab = lab_cpu.join_lab(lightness, ab_low.numpy())
    assert no_ab is None and rgb8.dtype == np.uint8
    assert np.abs(rgb8.astype(int) - np.round(rgb_ref_np * 255)).max() <= 1


def test_lightness_to_gray8_and_bad_input() -> None:
    lightness = np.linspace(-5, 105, 1000, dtype=np.float32).reshape(20, 50)
    expected = np.round(np.clip(lightness, 0, 100) * 2.55)
    assert np.abs(lab_cpu.lightness_to_gray8(lightness).astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="uint8"):
        lab_cpu.rgb8_to_lab(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="float32, uint8 or uint16"):
        lab_cpu.lab_to_rgb(lightness, np.zeros((2, 20, 50), np.float32), np.int8)


def test_any_beyond_finds_colour_anywhere() -> None:
    ab = np.zeros((2, 50, 60), np.float32)
    assert not lab_cpu.any_beyond(ab, 2.0)
    ab[1, 49, 59] = -2.5  # the last value, negative
    assert lab_cpu.any_beyond(ab, 2.0) and not lab_cpu.any_beyond(ab, 3.0)


def test_join_lab_sums_its_output_for_the_colourfulness() -> None:
    """8-bit output: the opponent sums taken row by row in the join equal those of the finished
    pixels (numpy in int64), and `finish` turns them into the output's colourfulness."""
    from pipeline.colorize.predict import finish
    from pipeline.imaging.metrics import colourfulness

    rng = np.random.default_rng(3)
    lightness = rng.uniform(0, 100, (100, 130)).astype(np.float32)
    ab_low = rng.uniform(-60, 60, (2, 25, 33)).astype(np.float32)
    sums = np.zeros(4, np.int64)
    rgb, _ = lab_cpu.join_lab(lightness, ab_low, np.uint8, opponent_sums=sums)
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    rg, yb = r - g, r + g - 2 * b
    expected = [rg.sum(), (rg * rg).sum(), yb.sum(), (yb * yb).sum()]
    np.testing.assert_array_equal(sums, expected)
    np.testing.assert_array_equal(lab_cpu.opponent_sums(rgb)[0], expected)  # RGBX in place
    out, _, score = finish(lightness, torch.from_numpy(ab_low), np.uint8, keep_ab=False)
    assert score == colourfulness(np.ascontiguousarray(out)) and score > 0

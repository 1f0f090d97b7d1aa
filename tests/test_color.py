import numpy as np
import pytest
import torch
from skimage import color

from pipeline.imaging.color import gray_to_lightness, lab_to_rgb, rgb_to_lab


def _to_t(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))).float()


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_rgb_to_lab_matches_skimage_on_real_photos(photos, name):
    rgb = photos[name].astype(np.float64) / 255.0
    ours = rgb_to_lab(_to_t(rgb)).numpy().transpose(1, 2, 0)
    assert np.abs(ours - color.rgb2lab(rgb)).max() <= 1e-3


def test_rgb_to_lab_matches_skimage_on_random_pixels_and_batches():
    rng = np.random.default_rng(0)
    rgb = rng.random((4, 32, 32, 3))
    rgb[0, 0, :4] = [[0, 0, 0], [1, 1, 1], [0.001, 0.002, 0.0], [1, 0, 0]]  # edges of the curves
    ours = rgb_to_lab(torch.from_numpy(rgb.transpose(0, 3, 1, 2)).float()).numpy()
    ref = np.stack([color.rgb2lab(x) for x in rgb]).transpose(0, 3, 1, 2)
    assert np.abs(ours - ref).max() <= 1e-3


def test_lab_to_rgb_matches_skimage_including_out_of_gamut():
    rng = np.random.default_rng(1)
    lab = np.stack(
        [
            rng.uniform(0, 100, (64, 64)),
            rng.uniform(-128, 128, (64, 64)),
            rng.uniform(-128, 128, (64, 64)),
        ],
        axis=-1,
    )
    with pytest.warns(UserWarning):  # skimage warns about the negative Z it clips
        ref = color.lab2rgb(lab)
    ours = lab_to_rgb(_to_t(lab)).numpy().transpose(1, 2, 0)
    assert np.abs(ours - ref).max() <= 1e-3


def test_round_trip_on_real_photo(photos):
    rgb = _to_t(photos["coffee"] / 255.0)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)


def test_gray_to_lightness_is_the_l_of_the_gray_colour():
    gray = torch.linspace(0, 1, 11).view(1, 11)
    ref = color.rgb2lab(np.repeat(gray.numpy()[..., None], 3, axis=-1))[..., 0]
    assert np.abs(gray_to_lightness(gray).numpy() - ref).max() <= 1e-3


def test_channel_check():
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_lab(torch.rand(2, 4, 4))

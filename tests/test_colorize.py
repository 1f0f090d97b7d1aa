import numpy as np
import torch
from PIL import Image
from skimage import color
from skimage.color import colorconv

from models import build
from pipeline.colorize.predict import colorize_images, colorize_lightness, finish, predict_low_ab
from pipeline.imaging.images import decode_pil

# The output keeps the input's L exactly, up to the rounding of its RGB to integers. Rounding
# moves each channel by at most half a level (0.5/255, 0.5/65535); the largest change of L that
# this can make, anywhere in the sRGB cube (the sum over the three channels of |L(c +- half a
# level) - L(c)|, on every 3rd 8-bit level, by skimage), is 0.2606 at 8 bits (dark colours such
# as (0, 27, 30), where dL/dY = 903.3 is steepest), and 1/257 of that at 16 bits. On top: 0.005
# at 8 bits (the grid's step) and 2e-4 at 16 bits for the float32 arithmetic of the join. One
# 8-bit level of a gray is 0.27 to 0.51 of L: an L off by one level would not fit.
L_TOLERANCE = {np.uint8: 0.2606 + 0.005, np.uint16: 0.2606 / 257 + 2e-4}


def _in_gamut(lightness: np.ndarray, ab: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """Pixels whose Lab (L, ab) is inside sRGB without clipping (clipping changes L)."""
    lab = np.stack([lightness, ab[0], ab[1]], -1).astype(np.float64)
    linear = color.lab2xyz(lab) @ colorconv.rgb_from_xyz.T
    return np.all((linear >= margin) & (linear <= 1 - margin), axis=-1)


def _check_exact_lightness(l_in: np.ndarray, rgb: np.ndarray, ab: np.ndarray) -> None:
    inside = _in_gamut(l_in, ab)
    assert inside.mean() > 0.6  # most of the image is checked
    l_out = color.rgb2lab(rgb / float(np.iinfo(rgb.dtype).max))[..., 0]
    delta = np.abs(l_out - l_in)[inside]
    tolerance = L_TOLERANCE[rgb.dtype.type]
    assert np.percentile(delta, 99.9) <= tolerance, np.percentile(delta, 99.9)
    assert delta.max() <= tolerance, delta.max()


def test_output_keeps_size_aspect_and_original_lightness(photos):
    model = build("small").eval()
    imgs = [Image.fromarray(photos["astronaut"]).convert("L"), Image.fromarray(photos["coffee"])]
    out = colorize_images(model, imgs)
    for src, res in zip(imgs, out, strict=True):
        assert res.size == src.size and res.mode == "RGB"
    # L of the output equals the L of the input, up to 8-bit rounding (and gamut clipping:
    # the pixels checked are those whose predicted Lab is inside sRGB)
    lightness = [decode_pil(img).lightness for img in imgs]
    joined = colorize_lightness(model, lightness)
    for l_in, (_, ab), res in zip(lightness, joined, out, strict=True):
        _check_exact_lightness(l_in.astype(np.float64), np.asarray(res), ab)


def test_16_bit_output_keeps_the_lightness_to_16_bit_rounding(photos):
    model = build("small").eval()
    l_in = decode_pil(Image.fromarray(photos["coffee"])).lightness
    ab_low = predict_low_ab(model, [l_in])[0]
    for dtype in (np.uint8, np.uint16):
        rgb, ab, _ = finish(l_in, ab_low, dtype)
        assert rgb.dtype == dtype and ab is not None
        _check_exact_lightness(l_in.astype(np.float64), rgb, ab)


def test_ab_is_predicted_low_res_and_upsampled_to_the_original_size(photos):
    model = build("small").eval()
    # a photo's L (structure that a flip or a transpose would move), cut to 300 x 517
    lightness = [decode_pil(Image.fromarray(photos["coffee"][50:350, 40:557])).lightness]
    low = predict_low_ab(model, lightness)[0]
    with torch.no_grad():
        small = torch.nn.functional.interpolate(
            torch.from_numpy(lightness[0])[None, None],
            size=(256, 256),
            mode="bilinear",
            antialias=True,
        )
        reference_low = model.predict_ab(small)
    assert reference_low.shape == (1, 2, 64, 64) and low.shape == (2, 64, 64)
    torch.testing.assert_close(low, reference_low[0], atol=0.05, rtol=0)
    # the data path's full-size ab (join_lab) against an independent bilinear resize of a
    # low-resolution ab, pixel for pixel: a transposed or flipped ab cannot match (random ab:
    # every low-resolution pixel differs from its mirror images)
    ab_low = torch.from_numpy(np.random.default_rng(1).uniform(-40, 40, (2, 64, 64))).float()
    rgb, ab, _ = finish(lightness[0], ab_low, np.uint8)
    assert ab is not None and ab.shape == (2, 300, 517) and rgb.shape == (300, 517, 3)
    expected = torch.nn.functional.interpolate(
        ab_low[None], size=(300, 517), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(torch.from_numpy(ab), expected, atol=1e-3, rtol=0)
    for flipped in (expected.flip(-1), expected.flip(-2)):  # either flip would show
        assert float((expected - flipped).abs().max()) > 1.0


def test_temperature_is_used():
    model = build("small").eval()
    lightness = [np.full((64, 64), 60, dtype=np.float32)]
    a = colorize_lightness(model, lightness, temperature=1.0)[0][0]
    b = colorize_lightness(model, lightness, temperature=0.05)[0][0]
    assert a.shape == (64, 64, 3) and not np.allclose(a, b)

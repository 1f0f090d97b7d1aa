import numpy as np
import torch
from PIL import Image
from skimage import color

from models import build
from pipeline.colorize import colorize_images, colorize_lightness, predict_low_ab, upsample_ab


def test_output_keeps_size_aspect_and_original_lightness(photos):
    model = build("small").eval()
    imgs = [Image.fromarray(photos["astronaut"]).convert("L"), Image.fromarray(photos["coffee"])]
    out = colorize_images(model, imgs)
    for src, res in zip(imgs, out, strict=True):
        assert res.size == src.size and res.mode == "RGB"
    # L of the output equals the L of the input (up to 8-bit rounding and gamut clipping)
    l_in = color.rgb2lab(np.asarray(imgs[1].convert("RGB")) / 255.0)[..., 0]
    l_out = color.rgb2lab(np.asarray(out[1]) / 255.0)[..., 0]
    assert np.median(np.abs(l_in - l_out)) < 0.5


def test_ab_is_predicted_low_res_and_upsampled_to_the_original_size():
    model = build("small").eval()
    lightness = [np.random.default_rng(0).uniform(0, 100, (300, 517)).astype(np.float32)]
    ab = upsample_ab(predict_low_ab(model, lightness)[0], (300, 517))
    assert ab.shape == (2, 300, 517)
    with torch.no_grad():
        small = torch.nn.functional.interpolate(
            torch.from_numpy(lightness[0])[None, None],
            size=(256, 256),
            mode="bilinear",
            antialias=True,
        )
        low = model.predict_ab(small)
    assert low.shape == (1, 2, 64, 64)
    torch.testing.assert_close(ab.mean(), low.mean(), atol=0.5, rtol=0)


def test_temperature_is_used():
    model = build("small").eval()
    lightness = [np.full((64, 64), 60, dtype=np.float32)]
    a = colorize_lightness(model, lightness, temperature=1.0)[0][0]
    b = colorize_lightness(model, lightness, temperature=0.05)[0][0]
    assert a.shape == (64, 64, 3) and not np.allclose(a, b)

"""Gallery previews show the output: views and thumbnails made at their own size from L and
the network's ab agree with the full-size output shrunk to that size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.colorize.previews import SIZES, previews
from pipeline.imaging.images import decode_pil, encode_image
from pipeline.imaging.lab_cpu import join_lab
from pipeline.imaging.resize_cpu import shrink


def _as_output(photo: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """A real photo at `size` (w, h) -> (L, ab at the network's 64 x 64, the 8-bit output,
    the network's 256 x 256 input L), as the worker has them."""
    dec = decode_pil(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))
    assert dec.ab is not None
    ab_low = np.stack([shrink(channel, (64, 64)) for channel in dec.ab])
    rgb, _ = join_lab(dec.lightness, ab_low, np.uint8)
    return dec.lightness, ab_low, rgb, shrink(dec.lightness, (256, 256))


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)


@pytest.mark.parametrize("size", [(2048, 1536), (700, 1300), (1024, 1024)])
def test_previews_match_the_output_shrunk(photos: dict[str, np.ndarray], size) -> None:
    lightness, ab_low, rgb, working = _as_output(photos["astronaut"], size)
    output = Image.fromarray(np.ascontiguousarray(rgb))
    jpeg = encode_image(rgb)
    got = previews(lightness, rgb, ab_low, working, jpeg if max(size) <= 1024 else None)
    for kind, longest in SIZES.items():
        scale = min(1.0, longest / max(size))
        expected_size = (round(size[0] * scale), round(size[1] * scale))
        expected = np.asarray(output.resize(expected_size, Image.Resampling.BILINEAR), float)
        view = _pixels(got[kind, "out"])
        assert view.shape == expected.shape
        # the same picture: JPEG noise, filtering in Lab rather than in sRGB, and (thumbnails)
        # a second resampling through the network's square input differ; colours agree
        assert np.abs(view - expected).mean() < 4.0, kind
        assert np.abs(view.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 1.5, kind
        gray = _pixels(got[kind, "in"])
        assert gray.shape == expected.shape and np.ptp(gray.mean(axis=2) - gray[..., 0]) < 1e-9
    if max(size) <= 1024:
        assert got["view", "out"] == jpeg  # the output's own JPEG, not encoded twice

"""Colorize a batch: L at working size -> network -> annealed mean -> ab upsampled to the
ORIGINAL size -> joined with the original L -> RGB. The output never changes size and keeps
the input's L exactly. The network runs on a batch; the rest runs per image, on the model's
device until the final RGB."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models import Colorizer
from pipeline.color import lab_to_rgb
from pipeline.images import decode_pil, rgb_to_pil


def working_batch(lightness: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Full-size L maps (H, W) on the device -> (N, 1, size, size), area-averaged (antialiased).

    The net sees a square (as the released model and popular tools do); colour is low frequency
    and is put back on the full-resolution L afterwards, so the aspect ratio is never lost.
    """
    return torch.cat(
        [
            F.interpolate(l_map[None, None], size=(size, size), mode="bilinear", antialias=True)
            for l_map in lightness
        ]
    )


@torch.inference_mode()
def predict_low(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L maps (H, W) float32 -> the network's ab (N, 2, h, w) at its output size and each
    image's uncertainty (N,), on its device.

    The batched step; `finish` then works image by image (a worker runs it in its threads).
    """
    full = [torch.from_numpy(l_map).to(model.device) for l_map in lightness]
    return model.predict(working_batch(full, model.working_size), temperature)


def predict_low_ab(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> torch.Tensor:
    """`predict_low` without the uncertainty."""
    return predict_low(model, lightness, temperature)[0]


@torch.inference_mode()
def upsample_ab(ab_low: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """ab (2, h, w) -> (2, H, W), bilinear."""
    return F.interpolate(ab_low[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.inference_mode()
def finish(l_map: np.ndarray, ab_low: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One image: its full-size L (H, W) and low-res ab (2, h, w) -> (RGB (H, W, 3) in [0, 1],
    ab (2, H, W)), float32 on the host. The join and conversion run on ab's device."""
    lightness = torch.from_numpy(l_map).to(ab_low.device)
    ab = upsample_ab(ab_low, lightness.shape)
    rgb = lab_to_rgb(torch.cat([lightness[None], ab])).permute(1, 2, 0)
    return rgb.cpu().numpy(), ab.cpu().numpy()


def colorize_lightness(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """L maps (H, W) -> (RGB (H, W, 3) in [0, 1], predicted ab (2, H, W)), float32, on the host."""
    ab_low = predict_low_ab(model, lightness, temperature)
    return [finish(l_map, ab) for l_map, ab in zip(lightness, ab_low, strict=True)]


def colorize_images(
    model: Colorizer, images: Sequence[Image.Image], temperature: float | None = None
) -> list[Image.Image]:
    """PIL images (any supported mode) -> colorized 8-bit RGB PIL images of the same size."""
    lightness = [decode_pil(img).lightness for img in images]
    return [rgb_to_pil(rgb) for rgb, _ in colorize_lightness(model, lightness, temperature)]

"""Colorize a batch: L at working size -> network -> annealed mean -> ab upsampled to the
ORIGINAL size -> joined with the original L -> RGB. The output never changes size and keeps
the input's L exactly; the batch stays on the model's device until the final RGB."""

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
def predict_ab(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> list[torch.Tensor]:
    """L maps (H, W) float32 -> ab at full resolution (2, H, W), on the model's device."""
    device = model.device
    full = [torch.from_numpy(l_map).to(device) for l_map in lightness]
    ab_low = model.predict_ab(working_batch(full, model.working_size), temperature)
    return [
        F.interpolate(ab_low[i : i + 1], size=l_map.shape, mode="bilinear", align_corners=False)[0]
        for i, l_map in enumerate(full)
    ]


@torch.inference_mode()
def colorize_lightness(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """L maps (H, W) -> (RGB (H, W, 3) in [0, 1], predicted ab (2, H, W)), float32, on the host.

    L and ab are joined and converted on the model's device; one copy to the host per image.
    """
    results = []
    for l_map, ab in zip(lightness, predict_ab(model, lightness, temperature), strict=True):
        lab = torch.cat([torch.from_numpy(l_map).to(ab.device)[None], ab])
        rgb = lab_to_rgb(lab).permute(1, 2, 0)
        results.append((rgb.cpu().numpy(), ab.cpu().numpy()))
    return results


def colorize_images(
    model: Colorizer, images: Sequence[Image.Image], temperature: float | None = None
) -> list[Image.Image]:
    """PIL images (any supported mode) -> colorized 8-bit RGB PIL images of the same size."""
    lightness = [decode_pil(img).lightness for img in images]
    return [rgb_to_pil(rgb) for rgb, _ in colorize_lightness(model, lightness, temperature)]

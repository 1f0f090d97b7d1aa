"""Colour conversions for the data path: Lab in torch (shared with `models`), and the gray
lightness of grayscale scans."""

from __future__ import annotations

import torch

from models.lab import lab_to_rgb, rgb_to_lab

__all__ = ["gray_to_lightness", "lab_to_rgb", "rgb_to_lab"]


def gray_to_lightness(gray: torch.Tensor) -> torch.Tensor:
    """Gray sRGB values in [0, 1] (any shape) -> CIE L in [0, 100] (the L of the gray colour)."""
    rgb = gray.unsqueeze(-3).expand(*gray.shape[:-2], 3, *gray.shape[-2:])
    return rgb_to_lab(rgb)[..., 0, :, :]

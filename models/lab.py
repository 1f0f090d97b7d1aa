"""sRGB (D65) <-> CIELAB in torch, batched, on any device.

Channels are at dim -3: (..., 3, H, W). RGB is float in [0, 1]; L in [0, 100], ab roughly
in [-110, 110]. The constants and the clipping on the way back follow
`skimage.color.rgb2lab / lab2rgb` so that results agree with it to float32 precision.
This lives in `models` because the ab bins are derived from the sRGB gamut; the pipeline
re-exports it as `pipeline.imaging.color`.
"""

from __future__ import annotations

import torch

# skimage.color.colorconv.xyz_from_rgb (sRGB primaries, D65).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def _matrix(like: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    m = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)
    if inverse:
        m = torch.linalg.inv(m)
    return m.to(device=like.device, dtype=like.dtype)


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (3, 3) x (..., 3, H, W) over the channel dim.
    return torch.einsum("ij,...jhw->...ihw", matrix, x)


def _white(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_WHITE_D65, device=like.device, dtype=like.dtype).view(3, 1, 1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> Lab, same shape, dtype and device."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(rgb.shape)}")
    if not rgb.is_floating_point():
        raise TypeError("rgb_to_lab needs a floating-point tensor in [0, 1]")
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _apply(_matrix(rgb), linear) / _white(rgb)
    f = torch.where(
        xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0
    )
    fx, fy, fz = f.unbind(-3)
    lightness = 116.0 * fy - 16.0
    return torch.stack((lightness, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab (..., 3, H, W) -> sRGB in [0, 1]; out-of-gamut colours are clipped as skimage does."""
    if lab.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(lab.shape)}")
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp_min(0.0)  # skimage sets negative z to 0
    f = torch.stack((fx, fy, fz), dim=-3)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787) * _white(lab)
    linear = _apply(_matrix(lab, inverse=True), xyz)
    rgb = torch.where(
        linear > 0.0031308,
        1.055 * linear.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055,
        12.92 * linear,
    )
    return rgb.clamp(0.0, 1.0)

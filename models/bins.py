"""The quantized ab output space: grid-10 cells that in-gamut 8-bit sRGB colours reach.

Rule (deterministic, no data needed): convert every one of the 2^24 8-bit sRGB colours to
Lab in float64, snap each (a, b) to the nearest multiple of `grid`, and keep every cell hit
at least once. Centres are the cell centres (multiples of `grid`), sorted by (a, b).
With grid 10 this gives 261 bins (the official release carries 313 of its own; see
docs/method.md). A checkpoint stores its centres, so any set can travel with a model.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from models.lab import rgb_to_lab

GRID = 10


@lru_cache(maxsize=4)
def _gamut_centers(grid: int) -> tuple[tuple[float, float], ...]:
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    cells: set[int] = set()
    offset = 4096 // grid  # keeps packed cell indices non-negative
    for red in levels.split(32):  # 32 x 256 x 256 colours a chunk keeps memory ~100 MB
        r, g, b = torch.meshgrid(red, levels, levels, indexing="ij")
        rgb = torch.stack((r.reshape(-1), g.reshape(-1), b.reshape(-1)))[:, :, None]
        ab = rgb_to_lab(rgb)[1:, :, 0]
        cell = torch.round(ab / grid).to(torch.int64) + offset
        cells.update(torch.unique(cell[0] * (2 * offset) + cell[1]).tolist())
    pairs = sorted((c // (2 * offset) - offset, c % (2 * offset) - offset) for c in cells)
    return tuple((float(a * grid), float(b * grid)) for a, b in pairs)


def gamut_bin_centers(grid: int = GRID) -> torch.Tensor:
    """(Q, 2) float32 ab centres of the grid cells reachable by 8-bit sRGB."""
    return torch.tensor(_gamut_centers(grid), dtype=torch.float32)


def nearest_bin(ab: torch.Tensor, centers: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """ab (N, 2, h, w), centers (Q, 2) -> index of the nearest centre, (N, h, w) int64.

    Fast path when the centres lie on the grid: a pixel whose rounded grid point is a bin has
    that bin as its nearest (rounding gives the nearest grid point, and bins are grid points).
    Only the rest (outside the bin set) are compared with every centre, in chunks, so that a
    full-resolution photo never builds a (Q, H, W) tensor.
    """
    n, _, h, w = ab.shape
    points = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    c = centers.to(points)
    out = torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
    if bool(torch.all(torch.remainder(c, GRID) == 0)):
        radius = int(c.abs().max().item() // GRID) + 1
        side = 2 * radius + 1
        lut = torch.full((side * side,), -1, dtype=torch.int64, device=points.device)
        cells = (c / GRID).round().long() + radius
        lut[cells[:, 0] * side + cells[:, 1]] = torch.arange(c.shape[0], device=points.device)
        cell = torch.round(points / GRID).long() + radius
        inside = ((cell >= 0) & (cell < side)).all(dim=1)
        out[inside] = lut[cell[inside, 0] * side + cell[inside, 1]]
    rest = (out < 0).nonzero().squeeze(1)
    for start in range(0, rest.shape[0], chunk):
        idx = rest[start : start + chunk]
        out[idx] = torch.cdist(points[idx], c).argmin(dim=1)
    return out.view(n, h, w)


def squared_distances(ab: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """ab (N, 2, h, w), centers (Q, 2) -> squared ab distance to every centre, (N, Q, h, w)."""
    diff = ab[:, None, :, :, :] - centers.to(ab)[None, :, :, None, None]
    return (diff**2).sum(dim=2)

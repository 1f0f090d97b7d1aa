"""The network's input on a CPU: a full-size L map shrunk to working size with the filter of
torch's `interpolate(mode="bilinear", antialias=True)` (Pillow's triangle filter, widened by the
scale), in two vectorised passes (numba): rows first, which reads the large map once in order,
then columns on the already small result. About 4x torch's generic kernel on one core; equal
to it within float rounding (tests/test_resize_cpu.py).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

f32 = np.float32
_jit = numba.njit(nogil=True, fastmath=True, cache=True)


@functools.lru_cache(maxsize=64)  # archives repeat a few sizes; callers never write to them
def filter_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: the first source pixel, how many it reads, and their weights (padded
    to the widest), as torch computes them for antialiased bilinear, align_corners=False."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # the triangle's half-width, in source pixels
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    count = np.minimum((centre + support + 0.5).astype(np.int64), in_size) - first
    taps = np.arange(int(count.max()))
    x = (taps[None, :] + first[:, None] - centre[:, None] + 0.5) * inverse
    weights = np.where(taps[None, :] < count[:, None], np.maximum(0.0, 1.0 - np.abs(x)), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return first, count, weights.astype(np.float32)


@_jit
def _add_scaled(weight, row, out):
    for x in range(out.shape[0]):
        out[x] += weight * row[x]


@_jit
def _shrink_rows(image, first, count, weights, out):
    """out[i] = sum_k weights[i, k] * image[first[i] + k]: whole rows, vectorised."""
    for i in range(out.shape[0]):
        out[i, :] = f32(0.0)
        for k in range(count[i]):
            _add_scaled(weights[i, k], image[first[i] + k], out[i])


@_jit
def _shrink_columns(image, first, count, weights, out):
    for i in range(out.shape[0]):
        row = image[i]
        for j in range(out.shape[1]):
            total = f32(0.0)
            for k in range(count[j]):
                total += weights[j, k] * row[first[j] + k]
            out[i, j] = total


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 -> (h, w) float32, as torch's antialiased bilinear interpolate."""
    height, width = image.shape
    rows = np.empty((size[0], width), np.float32)
    _shrink_rows(np.ascontiguousarray(image, dtype=np.float32), *filter_taps(size[0], height), rows)
    out = np.empty(size, np.float32)
    _shrink_columns(rows, *filter_taps(size[1], width), out)
    return out

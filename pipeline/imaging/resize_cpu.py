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


@_jit
def _shrink_pixel_columns(image, first, count, weights, channels, out):
    """As `_shrink_columns` over rows of RGB or RGBX pixels (`channels` 3 or 4 interleaved
    values): one sum per channel in registers, twice as fast as a loop over channels."""
    for i in range(out.shape[0]):
        row, dst = image[i], out[i]
        for j in range(weights.shape[0]):
            s0, s1, s2, s3 = f32(0.0), f32(0.0), f32(0.0), f32(0.0)
            p = first[j] * channels
            for k in range(count[j]):
                w = weights[j, k]
                s0 += w * row[p]
                s1 += w * row[p + 1]
                s2 += w * row[p + 2]
                if channels == 4:
                    s3 += w * row[p + 3]
                p += channels
            q = j * channels
            dst[q], dst[q + 1], dst[q + 2] = s0, s1, s2
            if channels == 4:
                dst[q + 3] = s3


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) or (H, W, C), C 3 or 4 -> (h, w) or (h, w, C) float32, as torch's antialiased bilinear
    interpolate of each channel. Float input is read as float32; 8- and 16-bit input as it is
    (no float copy at full size), its levels kept (0..255, 0..65535) but not rounded."""
    height, width = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels not in (1, 3, 4):
        raise ValueError(f"shrink takes (H, W), (H, W, 3) or (H, W, 4), not {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        image = np.ascontiguousarray(image, dtype=np.float32)
    flat = np.ascontiguousarray(image).reshape(height, width * channels)
    rows = np.empty((size[0], width * channels), np.float32)
    _shrink_rows(flat, *filter_taps(size[0], height), rows)
    out = np.empty((size[0], size[1] * channels), np.float32)
    if channels == 1:
        _shrink_columns(rows, *filter_taps(size[1], width), out)
    else:
        _shrink_pixel_columns(rows, *filter_taps(size[1], width), channels, out)
    return out.reshape(size if image.ndim == 2 else (*size, channels))

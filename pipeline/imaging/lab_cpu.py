"""sRGB <-> CIELAB on the CPU for whole images, each in one vectorised pass (numba).

The same maths as `models.lab` (skimage's constants and clipping), which stays the reference
and what runs on a GPU. Here the per-pixel powers are polynomials in t ** (1/4) (two square
roots), so that LLVM vectorises the loop with no lookups; each is a degree-7 Chebyshev fit
on its range (max error: sRGB gamma 1e-6, cube root 5e-7, linearisation 3e-9), so results
stay within 1e-3 of skimage (measured in tests/test_lab_cpu.py; figures in
docs/benchmarks.md). Every kernel releases the GIL: a worker's threads run one image each.

- `rgb8_to_lab`: 8-bit RGB (H, W, 3) -> L (H, W), ab (2, H, W): decoding colour inputs.
- `lab_to_rgb`: L, ab -> RGB (H, W, 3) as float32 in [0, 1], uint8 or uint16.
- `join_lab`: full-size L and the network's low-resolution ab -> RGB, with ab upsampled
  bilinearly (as `torch.nn.functional.interpolate`, align_corners=False) inside the same
  pass: the colorized output of one image, never holding a full-size ab unless asked.
- `lightness_to_gray8`: L -> the 8-bit gray that previews show.
- `levels_to_lightness`: gray levels -> L through a table (decoding gray scans).

8-bit RGB from `join_lab` is stored as RGBX (a fourth, unused byte per pixel), the layout
Pillow keeps RGB in: Pillow then uses that memory as it is, where packed RGB costs a copy and
an unpacking pass of about 1 ms per megapixel (`rgbx_of`, `images.rgb_to_pil`).
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
from numpy.polynomial import chebyshev

f32 = np.float32


def _fit(fn, low: float) -> tuple[np.float32, ...]:
    """Monomial coefficients of a degree-7 Chebyshev fit of fn(u) on [low, 1]."""
    u = np.linspace(low, 1.0, 20001)
    return tuple(f32(c) for c in chebyshev.cheb2poly(chebyshev.chebfit(u, fn(u), 7)))


# In u = t ** (1/4): gamma-encode 1.055 t^(5/12) - 0.055; Lab's cube root t^(1/3); and the
# t^0.4 of linearisation t^2.4 = t^2 t^0.4, each above its linear segment.
_GAMMA = _fit(lambda u: 1.055 * u ** (5 / 3) - 0.055, 0.0031308**0.25)
_CBRT = _fit(lambda u: u ** (4 / 3), 0.008856**0.25)
_POW04 = _fit(lambda u: u**1.6, ((0.04045 + 0.055) / 1.055) ** 0.25)

# skimage.color.colorconv.xyz_from_rgb, and the D65 white folded into it both ways
_XYZ_FROM_RGB = np.array(
    [(0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227)]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])
# unpacked into float32 scalars: numba folds them in as constants
(_A00, _A01, _A02), (_A10, _A11, _A12), (_A20, _A21, _A22) = (
    _XYZ_FROM_RGB / _WHITE[:, None]
).astype(f32)
(_B00, _B01, _B02), (_B10, _B11, _B12), (_B20, _B21, _B22) = (
    np.linalg.inv(_XYZ_FROM_RGB) * _WHITE[None, :]
).astype(f32)
_ZERO, _ONE = f32(0.0), f32(1.0)
_KNEE_GAMMA, _KNEE_CBRT, _KNEE_LINEAR, _KNEE_CUBE = map(
    f32, (0.0031308, 0.008856, 0.04045, 0.2068966)
)
_OFFSET = f32(16.0 / 116.0)

_jit = numba.njit(nogil=True, fastmath=True, cache=True)
_inline = numba.njit(nogil=True, fastmath=True, inline="always")


@_inline
def _poly(c, u):
    inner = c[4] + u * (c[5] + u * (c[6] + u * c[7]))
    return c[0] + u * (c[1] + u * (c[2] + u * (c[3] + u * inner)))


@_inline
def _gamma(v):
    """Linear light -> sRGB in [0, 1], clipped."""
    u = np.sqrt(np.sqrt(max(v, _KNEE_GAMMA)))
    s = _poly(_GAMMA, u) if v > _KNEE_GAMMA else f32(12.92) * v
    return min(max(s, _ZERO), _ONE)


@_inline
def _linear(s):
    """sRGB in [0, 1] -> linear light."""
    w = (s + f32(0.055)) * f32(1.0 / 1.055)
    u = np.sqrt(np.sqrt(max(w, _ZERO)))
    return w * w * _poly(_POW04, u) if s > _KNEE_LINEAR else s * f32(1.0 / 12.92)


@_inline
def _f(t):
    u = np.sqrt(np.sqrt(max(t, _KNEE_CBRT)))
    return _poly(_CBRT, u) if t > _KNEE_CBRT else f32(7.787) * t + _OFFSET


@_inline
def _f_inverse(f):
    return f * f * f if f > _KNEE_CUBE else (f - _OFFSET) * f32(1.0 / 7.787)


@_inline
def _lab_pixel(lightness, a, b):
    """Lab of one pixel -> sRGB (r, g, b) in [0, 1], clipped like skimage. (It returns
    values: an array passed into it costs reference counting that stops vectorisation.)"""
    fy = (lightness + f32(16.0)) * f32(1.0 / 116.0)
    x = _f_inverse(a * f32(1.0 / 500.0) + fy)
    y = _f_inverse(fy)
    z = _f_inverse(max(fy - b * f32(1.0 / 200.0), _ZERO))  # skimage sets negative z to 0
    return (
        _gamma(_B00 * x + _B01 * y + _B02 * z),
        _gamma(_B10 * x + _B11 * y + _B12 * z),
        _gamma(_B20 * x + _B21 * y + _B22 * z),
    )


@_jit
def _rgb8_to_lab(rgb, lightness, a, b):
    for k in range(lightness.shape[0]):
        r = _linear(rgb[3 * k] * f32(1.0 / 255.0))
        g = _linear(rgb[3 * k + 1] * f32(1.0 / 255.0))
        bl = _linear(rgb[3 * k + 2] * f32(1.0 / 255.0))
        fx = _f(_A00 * r + _A01 * g + _A02 * bl)
        fy = _f(_A10 * r + _A11 * g + _A12 * bl)
        fz = _f(_A20 * r + _A21 * g + _A22 * bl)
        lightness[k] = f32(116.0) * fy - f32(16.0)
        a[k] = f32(500.0) * (fx - fy)
        b[k] = f32(200.0) * (fy - fz)


@_jit
def _lab_to_rgb(lightness, a, b, out, scale, offset):
    # flat arrays: with 2-D indexing LLVM does not see the access pattern (4x slower)
    for k in range(lightness.shape[0]):
        r, g, bl = _lab_pixel(lightness[k], a[k], b[k])
        out[3 * k] = r * scale + offset
        out[3 * k + 1] = g * scale + offset
        out[3 * k + 2] = bl * scale + offset


@_jit
def _lab_to_rgbx(lightness, a, b, out):
    """As `_lab_to_rgb` into 8-bit RGBX (a fourth byte of 255): one 32-bit word per pixel."""
    for k in range(lightness.shape[0]):
        r, g, bl = _lab_pixel(lightness[k], a[k], b[k])
        out[4 * k] = r * f32(255.0) + f32(0.5)
        out[4 * k + 1] = g * f32(255.0) + f32(0.5)
        out[4 * k + 2] = bl * f32(255.0) + f32(0.5)
        out[4 * k + 3] = 255


@_jit
def _lerp(v0, v1, w1, out):
    w0 = _ONE - w1
    for x in range(out.shape[0]):
        out[x] = w0 * v0[x] + w1 * v1[x]


@_jit
def _upsample_rows(ab_low, x0, x1, wx, out):
    """ab_low (2, h, w) -> out (2, h, W): each low-resolution row upsampled along x."""
    for c in range(ab_low.shape[0]):
        for y in range(ab_low.shape[1]):
            row, out_row = ab_low[c, y], out[c, y]
            for x in range(out_row.shape[0]):
                out_row[x] = (_ONE - wx[x]) * row[x0[x]] + wx[x] * row[x1[x]]


@_inline
def _accumulate(sums, r, g, b):
    """(rg, rg^2, yb', yb'^2) sums with one more pixel, in the type of r, g and b (yb' is
    r + g - b - b: a literal 2 would widen int32 sums to int64)."""
    rg, yb = r - g, r + g - b - b
    return sums[0] + rg, sums[1] + rg * rg, sums[2] + yb, sums[3] + yb * yb


@_inline
def _add_to(sums, totals):
    for i in range(4):
        sums[i] += totals[i]


def _opponent_kernel(exact: bool) -> Any:
    """A kernel adding the sums of rg, rg^2, yb' and yb'^2 (rg = r - g, yb' = r + g - 2b: what
    `metrics.colourfulness` needs) of RGB rows (H, W * 3) to `sums`. Integer pixels are summed
    exactly in int64 (float32 sums drifted by 0.2% on a megapixel); float ones in float64."""
    number: Any = np.int64 if exact else np.float64
    zero = number(0)

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def add_rows(rows, sums):  # pragma: no cover - compiled
        for y in range(rows.shape[0]):
            row = rows[y]
            totals = (zero, zero, zero, zero)
            for k in range(row.shape[0] // 3):
                r, g, b = number(row[3 * k]), number(row[3 * k + 1]), number(row[3 * k + 2])
                totals = _accumulate(totals, r, g, b)
            _add_to(sums, totals)

    return add_rows


_OPPONENT_RGB = {exact: _opponent_kernel(exact) for exact in (True, False)}
_SEGMENT = 8192  # RGBX pixels summed in int32: 8192 * 510^2 (the largest yb'^2) < 2^31
# int32 constants keep the loop in int32
_BYTE, _SHIFT_G, _SHIFT_B = np.int32(255), np.int32(8), np.int32(16)


@_jit
def _add_rgbx_segment(words, sums):
    """At most `_SEGMENT` RGBX pixels as little-endian 32-bit words (R in the low byte): their
    opponent sums (as `_opponent_kernel`'s) in int32, eight or sixteen pixels to a vector,
    four times the int64 sums over bytes; exact."""
    zero = np.int32(0)
    totals = (zero, zero, zero, zero)
    for k in range(words.shape[0]):
        word = np.int32(words[k])
        r, g, b = word & _BYTE, (word >> _SHIFT_G) & _BYTE, (word >> _SHIFT_B) & _BYTE
        totals = _accumulate(totals, r, g, b)
    _add_to(sums, totals)


@_jit
def _add_rgbx_sums(pixels, sums):
    """RGBX pixels (n * 4 bytes) -> their opponent sums added to `sums` (int64)."""
    words = pixels.view(np.uint32)
    for start in range(0, words.shape[0], _SEGMENT):
        _add_rgbx_segment(words[start : start + _SEGMENT], sums)


@_jit
def _join_lab(lightness, ab_rows, wy, y0, y1, out, ab_out, scale, offset, sums):
    """ab_rows (2, h, W): the low-resolution ab already upsampled along x; each output row
    interpolates two of them (y0, y1 with weight wy), then converts. An 8-bit row's opponent
    sums are added to `sums` while the row is in cache (a second pass over the image, for its
    colourfulness, cost more than the join's own Lab -> RGB)."""
    height, width = lightness.shape
    scratch = np.empty((2, width), np.float32)
    for y in range(height):
        a_out, b_out = (ab_out[0, y], ab_out[1, y]) if ab_out.shape[1] else (scratch[0], scratch[1])
        # three short loops rather than one: with more than a few arrays in one loop LLVM
        # gives up its run-time overlap checks and does not vectorise it
        _lerp(ab_rows[0, y0[y]], ab_rows[0, y1[y]], wy[y], a_out)
        _lerp(ab_rows[1, y0[y]], ab_rows[1, y1[y]], wy[y], b_out)
        if out.shape[2] == 4:
            _lab_to_rgbx(lightness[y], a_out, b_out, out[y].reshape(-1))
            _add_rgbx_sums(out[y].reshape(-1), sums)
        else:
            _lab_to_rgb(lightness[y], a_out, b_out, out[y].reshape(-1), scale, offset)


@_jit
def _lightness_to_gray8(lightness, out):
    for k in range(lightness.shape[0]):
        out[k] = min(max(lightness[k], _ZERO), f32(100.0)) * f32(2.55) + f32(0.5)


@_jit
def _lookup(table, levels, out):
    for k in range(levels.shape[0]):
        out[k] = table[levels[k]]


@_jit
def _any_beyond(values, limit):
    for k in range(values.shape[0]):  # noqa: SIM110 (numba compiles no generators)
        if abs(values[k]) > limit:
            return True
    return False


_SCALE = {np.dtype(np.float32): (1.0, 0.0), np.dtype(np.uint8): (255.0, 0.5),
          np.dtype(np.uint16): (65535.0, 0.5)}  # fmt: skip


def _scale(dtype: np.dtype | type) -> tuple[np.float32, np.float32]:
    """(scale, offset) to write sRGB in [0, 1] as `dtype` (integers are rounded)."""
    try:
        scale, offset = _SCALE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"RGB as float32, uint8 or uint16, not {np.dtype(dtype)}") from None
    return f32(scale), f32(offset)


def rgb8_to_lab(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-bit sRGB (H, W, 3) -> (L (H, W), ab (2, H, W)), float32."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    height, width, _ = rgb.shape
    lab = np.empty((3, height * width), np.float32)
    _rgb8_to_lab(np.ascontiguousarray(rgb).reshape(-1), lab[0], lab[1], lab[2])
    lab = lab.reshape(3, height, width)
    return lab[0], lab[1:]


def lab_to_rgb(
    lightness: np.ndarray, ab: np.ndarray, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """L (H, W) and ab (2, H, W) -> sRGB (H, W, 3): float32 in [0, 1], uint8 or uint16."""
    height, width = lightness.shape
    out = np.empty(height * width * 3, dtype)
    flat_l = np.ascontiguousarray(lightness, dtype=np.float32).reshape(-1)
    flat_ab = np.ascontiguousarray(ab, dtype=np.float32).reshape(2, -1)
    _lab_to_rgb(flat_l, flat_ab[0], flat_ab[1], out, *_scale(dtype))
    return out.reshape(height, width, 3)


@functools.lru_cache(maxsize=64)
def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear (align_corners=False) source pixels and weight, per output pixel."""
    src = (np.arange(out_size, dtype=np.float32) + f32(0.5)) * f32(in_size / out_size) - f32(0.5)
    src = np.maximum(src, f32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def join_lab(
    lightness: np.ndarray,
    ab_low: np.ndarray,
    dtype: np.dtype | type = np.uint8,
    keep_ab: bool = False,
    opponent_sums: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-size L (H, W) and low-resolution ab (2, h, w) -> (sRGB (H, W, 3) as `dtype`,
    the full-size ab (2, H, W) if `keep_ab`, else None). 8-bit RGB is a view of RGBX pixels
    (`rgbx_of`), which Pillow and the metrics read as they are (no copy). For 8-bit RGB, the
    output's opponent sums (as `opponent_sums` makes them) are added to `opponent_sums`
    (int64 (4,)) if it is given."""
    height, width = lightness.shape
    x0, x1, wx = _source_index(width, ab_low.shape[2])
    y0, y1, wy = _source_index(height, ab_low.shape[1])
    ab_low = np.ascontiguousarray(ab_low, dtype=np.float32)
    ab_rows = np.empty((2, ab_low.shape[1], width), np.float32)
    _upsample_rows(ab_low, x0, x1, wx, ab_rows)
    channels = 4 if np.dtype(dtype) == np.uint8 else 3
    out = np.empty((height, width, channels), dtype)
    ab_out = np.empty((2, height, width) if keep_ab else (2, 0, 0), np.float32)
    l_map = np.ascontiguousarray(lightness, dtype=np.float32)
    sums = np.zeros(4, np.int64) if opponent_sums is None else opponent_sums
    _join_lab(l_map, ab_rows, wy, y0, y1, out, ab_out, *_scale(dtype), sums)
    return out[..., :3], ab_out if keep_ab else None


def rgbx_of(rgb: np.ndarray) -> np.ndarray | None:
    """The contiguous 8-bit RGBX array (H, W, 4) that `rgb` (H, W, 3) is the first three
    channels of (as `join_lab` returns), or None."""
    base = rgb.base
    if (
        isinstance(base, np.ndarray)
        and rgb.dtype == np.uint8
        and base.dtype == np.uint8
        and base.shape == (*rgb.shape[:2], 4)
        and base.flags.c_contiguous
        and rgb.ctypes.data == base.ctypes.data
        and rgb.strides == base.strides
    ):
        return base
    return None


def any_beyond(values: np.ndarray, limit: float) -> bool:
    """Whether any |value| exceeds `limit`, stopping at the first that does (a colour photo's
    ab: at once; numpy's abs-then-max made a copy and read it all, ~2 ms per megapixel)."""
    return bool(_any_beyond(np.ascontiguousarray(values).reshape(-1), values.dtype.type(limit)))


def opponent_sums(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """RGB (H, W, 3), float, uint8 or uint16, or a view of RGBX pixels (read in place) ->
    (sums of rg, rg^2, yb', yb'^2 (int64 for integer pixels, else float64), pixel count)."""
    exact = rgb.dtype.kind == "u"
    sums = np.zeros(4, np.int64 if exact else np.float64)
    rgbx = rgbx_of(rgb)
    if rgbx is not None:
        _add_rgbx_sums(rgbx.reshape(-1), sums)
    else:
        _OPPONENT_RGB[exact](np.ascontiguousarray(rgb).reshape(rgb.shape[0], -1), sums)
    return sums, rgb.shape[0] * rgb.shape[1]


def lightness_to_gray8(lightness: np.ndarray) -> np.ndarray:
    """L in [0, 100] (any shape) -> uint8 gray, round(L * 2.55)."""
    out = np.empty(lightness.size, np.uint8)
    _lightness_to_gray8(np.ascontiguousarray(lightness, dtype=np.float32).reshape(-1), out)
    return out.reshape(lightness.shape)


def levels_to_lightness(levels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Gray levels (any shape, uint8 or uint16) -> L float32 through `table` (L per level): one
    gather per pixel, 4x numpy's `take` (which first widens every index to int64)."""
    out = np.empty(levels.size, np.float32)
    _lookup(np.asarray(table, dtype=np.float32), np.ascontiguousarray(levels).reshape(-1), out)
    return out.reshape(levels.shape)

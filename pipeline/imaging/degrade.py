"""Old-print degradation of a lightness image: what archives do to photos, applied to L only.

Training degrades the network's input at random strengths and keeps the clean colours as the
target (as DeOldify's training does), so that grain, dust, faded contrast, soft focus and
JPEG blocks are not read as colour. `evaluate --degrade` scores a model on the old-print
version of each photo at one fixed strength (`OLD_PRINT`), against the clean colours.

Sizes are relative to a 256-px image and scale with the image, so a full-size scan and a
training crop are degraded alike.

Film response (`film_lightness`): historical film did not see colour as Lab's L does. A film's
gray is the L* of a mix of the photo's linear sRGB channels with the film's weights:
orthochromatic film is nearly blind to red (red lips black, skies white), panchromatic film is
close to luminance, and a yellow, orange or red filter on it darkens blue skies. Training draws
a random response (`random_film`) for a share of its inputs; `evaluate --film NAME` scores the
photos as shot on one of `FILMS`. Weights from film data sheets, approximate (STACK-NOTES).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class OldPrint:
    lift: float = 0.0  # blacks lifted to this L
    fade: float = 0.0  # whites lowered by this much L
    blur: float = 0.0  # soft focus: Gaussian sigma, pixels of a 256-px image
    grain: float = 0.0  # film grain: standard deviation in L units
    dust: float = 0.0  # specks per 10,000 pixels
    scratches: int = 0  # thin light lines
    jpeg: int = 0  # JPEG quality of the scan (0: none)


# The fixed strength `evaluate --degrade` scores with: a faded, soft, grainy, dusty print,
# scanned to JPEG quality 45.
OLD_PRINT = OldPrint(lift=12.0, fade=10.0, blur=0.8, grain=5.0, dust=1.5, scratches=1, jpeg=45)


def random_old_print(rng: np.random.Generator) -> OldPrint:
    """A random strength for training: every kind of damage, each from none to heavy."""
    return OldPrint(
        lift=float(rng.uniform(0, 20)) * (rng.random() < 0.7),
        fade=float(rng.uniform(0, 15)) * (rng.random() < 0.7),
        blur=float(rng.uniform(0, 1.5)) * (rng.random() < 0.6),
        grain=float(rng.uniform(0, 9)) * (rng.random() < 0.7),
        dust=float(rng.uniform(0, 3)) * (rng.random() < 0.5),
        scratches=int(rng.integers(0, 3)) * (rng.random() < 0.3),
        jpeg=int(rng.integers(30, 91)) if rng.random() < 0.6 else 0,
    )


def degrade_lightness(
    lightness: np.ndarray, damage: OldPrint, rng: np.random.Generator
) -> np.ndarray:
    """L in [0, 100] (H, W) -> its old-print version, float32 in [0, 100]."""
    h, w = lightness.shape
    scale = max(h, w) / 256.0
    out = lightness.astype(np.float32)
    if damage.blur > 0:
        out = gaussian_filter(out, damage.blur * scale, mode="nearest")
    if damage.lift or damage.fade:
        out = damage.lift + out * (100.0 - damage.lift - damage.fade) / 100.0
    if damage.grain > 0:  # grain a little coarser than a pixel, as on film
        noise = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.6)
        out = out + noise * (damage.grain / max(float(noise.std()), 1e-6))
    if damage.dust > 0 or damage.scratches:
        out = _dust_and_scratches(out, damage, rng, scale)
    out = np.clip(out, 0.0, 100.0)
    if damage.jpeg:
        out = _jpeg_round_trip(out, damage.jpeg)
    return out.astype(np.float32)


def _dust_and_scratches(
    out: np.ndarray, damage: OldPrint, rng: np.random.Generator, scale: float
) -> np.ndarray:
    h, w = out.shape
    marks = Image.new("L", (w, h), 0)  # 255: white dust, 128: dark dust
    draw = ImageDraw.Draw(marks)
    for _ in range(int(rng.poisson(damage.dust * h * w / 10_000))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = max(0.5, rng.uniform(0.3, 1.2) * scale)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255 if rng.random() < 0.7 else 128)
    for _ in range(damage.scratches):
        x0, x1 = rng.uniform(0, w, 2)
        draw.line((x0, 0, x1, h), fill=255, width=max(1, round(0.4 * scale)))
    mask = np.asarray(marks)
    out = out.copy()
    out[mask == 255] = np.maximum(out[mask == 255], 92.0)
    out[mask == 128] = np.minimum(out[mask == 128], 10.0)
    return out


def _jpeg_round_trip(lightness: np.ndarray, quality: int) -> np.ndarray:
    gray = Image.fromarray(np.round(lightness * 2.55).astype(np.uint8), "L")
    buf = io.BytesIO()
    gray.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 2.55


# -- film response ---------------------------------------------------------------------------
Weights = tuple[float, float, float]  # a film's response as a mix of linear sRGB (R, G, B)

# Luminance Y of linear sRGB (Rec. 709 primaries, D65): the Y row of skimage's and
# models.lab's sRGB -> XYZ matrix, so that these weights give exactly Lab's L
LUMINANCE: Weights = (0.212671, 0.715160, 0.072169)
_ORTHO: Weights = (0.05, 0.45, 0.50)  # blue and green, almost no red
_PAN: Weights = (0.26, 0.67, 0.07)  # close to luminance, a little more red
# a filter's transmission per channel, on panchromatic film
_FILTERS: dict[str, Weights] = {
    "yellow": (1.0, 1.0, 0.5),  # blue to about half: skies darker
    "orange": (1.0, 1.0, 0.25),  # blue to a quarter
    "red": (1.0, 1 / 3, 0.1),  # blue to a tenth, green to a third: skies near black
}


def _normalised(weights: Sequence[float]) -> Weights:
    r, g, b = (float(w) for w in weights)
    total = r + g + b
    if min(r, g, b) < 0 or total <= 0:
        raise ValueError(f"a film's weights must be >= 0 with a positive sum, got {weights}")
    return (r / total, g / total, b / total)


def _filtered(film: Weights, transmission: Weights) -> Weights:
    return _normalised(tuple(w * t for w, t in zip(film, transmission, strict=True)))


# the fixed responses `evaluate --film NAME` scores with (weights summing to 1)
FILMS: dict[str, Weights] = {
    "ortho": _normalised(_ORTHO),
    "pan": _normalised(_PAN),
    **{name: _filtered(_PAN, t) for name, t in _FILTERS.items()},
}


def random_film(rng: np.random.Generator) -> Weights:
    """A random film response for training (weights summing to 1): orthochromatic,
    panchromatic, or panchromatic behind a yellow, orange or red filter, one in five each,
    each jittered within the data sheets' spread."""
    kind = int(rng.integers(len(FILMS)))
    if kind == 0:  # ortho: R 0-0.1, G 0.3-0.6, B 0.4-0.7
        return _normalised((rng.uniform(0, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.7)))
    pan = _normalised(
        (
            LUMINANCE[0] * rng.uniform(1.05, 1.4),  # a little more red than luminance
            LUMINANCE[1] * rng.uniform(0.9, 1.0),
            LUMINANCE[2] * rng.uniform(0.85, 1.15),
        )
    )
    if kind == 1:
        return pan
    blue, green = {2: ((0.4, 0.6), (1.0, 1.0)), 3: ((0.2, 0.3), (1.0, 1.0)),
                   4: ((0.07, 0.13), (0.25, 0.4))}[kind]  # fmt: skip
    return _filtered(pan, (1.0, rng.uniform(*green), rng.uniform(*blue)))


# 8-bit sRGB -> linear, the sRGB curve (IEC 61966-2-1) as skimage and models.lab apply it
_LINEAR_8 = np.where(
    np.arange(256) / 255.0 > 0.04045,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
    np.arange(256) / 255.0 / 12.92,
)


def _linear_srgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return _LINEAR_8[rgb]
    x = rgb.astype(np.float64) / (65535.0 if rgb.dtype == np.uint16 else 1.0)
    return np.where(x > 0.04045, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)


def film_lightness(rgb: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The CIE L* (H, W) float32 in [0, 100] of the gray a film with this linear-sRGB channel
    response gives of `rgb` (H, W, 3): uint8, uint16, or float in [0, 1]. The weights are
    normalised to sum 1 (so white stays L 100); `LUMINANCE` gives Lab's own L."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    luminance = _linear_srgb(rgb) @ np.asarray(_normalised(weights), dtype=np.float64)
    # Y -> L*, the CIE formula with the constants of skimage.color.rgb2lab (white Y = 1)
    f = np.where(
        luminance > 0.008856,
        np.cbrt(np.maximum(luminance, 0.008856)),
        7.787 * luminance + 16.0 / 116.0,
    )
    return np.clip(116.0 * f - 16.0, 0.0, 100.0).astype(np.float32)

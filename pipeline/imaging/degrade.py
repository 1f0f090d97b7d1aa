"""Old-print degradation of a lightness image: what archives do to photos, applied to L only.

Training degrades the network's input at random strengths and keeps the clean colours as the
target (as DeOldify's training does), so that grain, dust, faded contrast, soft focus and
JPEG blocks are not read as colour. `evaluate --degrade` scores a model on the old-print
version of each photo at one fixed strength (`OLD_PRINT`), against the clean colours.

Sizes are relative to a 256-px image and scale with the image, so a full-size scan and a
training crop are degraded alike.
"""

from __future__ import annotations

import io
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

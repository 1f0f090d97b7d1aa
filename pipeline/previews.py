"""The small images a person reviews a run with: gray input and colour output of each ok row,
as a thumbnail (longer side <= 192 px) and a view (<= 1024 px), written by the workers beside
the output so that the gallery (pipeline/gallery.py) never touches the full-size images.

Names: DEST/gallery/{thumbs,view}/<shard name>/<row position in the shard, 6 digits>-{in,out}.jpg
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.images import rgb_to_pil

GALLERY_DIR = "gallery"
SIZES = {"thumbs": 192, "view": 1024}
QUALITY = {"thumbs": 80, "view": 88}


def preview_uri(dest: str, size: str, shard: str, position: int, side: str) -> str:
    """`size` "thumbs" or "view"; `side` "in" (gray input) or "out" (colour output)."""
    return storage.join(dest, GALLERY_DIR, size, shard, f"{position:06d}-{side}.jpg")


def gray_and_colour(lightness: np.ndarray, rgb: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """L (H, W) in [0, 100] and RGB (H, W, 3) in [0, 1] -> (8-bit gray, 8-bit RGB) images."""
    gray = Image.fromarray(np.round(np.clip(lightness, 0, 100) * 2.55).astype(np.uint8), "L")
    return gray, rgb_to_pil(rgb)


def previews(lightness: np.ndarray, rgb: np.ndarray) -> dict[tuple[str, str], bytes]:
    """{(size, side): JPEG bytes} for one image: L (H, W) in [0, 100], RGB (H, W, 3) in [0, 1]."""
    gray, colour = gray_and_colour(lightness, rgb)
    out: dict[tuple[str, str], bytes] = {}
    for size, longest in SIZES.items():
        for side, image in (("in", gray), ("out", colour)):
            small = image.copy()
            small.thumbnail((longest, longest), Image.Resampling.LANCZOS, reducing_gap=3.0)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=QUALITY[size])
            out[size, side] = buf.getvalue()
    return out

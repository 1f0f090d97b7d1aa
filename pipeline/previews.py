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
from pipeline.lab_cpu import lightness_to_gray8

GALLERY_DIR = "gallery"
SIZES = {"thumbs": 192, "view": 1024}
QUALITY = {"thumbs": 80, "view": 88}


def preview_uri(dest: str, size: str, shard: str, position: int, side: str) -> str:
    """`size` "thumbs" or "view"; `side` "in" (gray input) or "out" (colour output)."""
    return storage.join(dest, GALLERY_DIR, size, shard, f"{position:06d}-{side}.jpg")


def gray_and_colour(lightness: np.ndarray, rgb: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """L (H, W) in [0, 100] and RGB (H, W, 3) (float in [0, 1], uint8 or uint16) -> (8-bit
    gray, 8-bit RGB) images."""
    return Image.fromarray(lightness_to_gray8(lightness), "L"), rgb_to_pil(rgb)


def previews(
    gray: Image.Image,
    colour: Image.Image,
    colour_jpeg: bytes | None = None,
    gray_jpeg: bytes | None = None,
) -> dict[tuple[str, str], bytes]:
    """{(size, side): JPEG bytes} for one image, from `gray_and_colour`'s pair. A JPEG given as
    `colour_jpeg` (the output's own) or `gray_jpeg` (a gray input's own, shown as it is stored)
    is the view of an image no larger than a view: not encoded twice."""
    out: dict[tuple[str, str], bytes] = {}
    as_stored = {"in": gray_jpeg, "out": colour_jpeg}
    for size, longest in SIZES.items():
        for side, image in (("in", gray), ("out", colour)):
            stored = as_stored[side]
            if stored is not None and max(image.size) <= longest:
                out[size, side] = stored
                continue
            small = image.copy()
            small.thumbnail((longest, longest), Image.Resampling.LANCZOS, reducing_gap=1.0)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=QUALITY[size])
            out[size, side] = buf.getvalue()
    return out


def write_previews(
    dest: str, shard: str, position: int, images: dict[tuple[str, str], bytes]
) -> None:
    for (size, side), data in images.items():
        storage.write_bytes(preview_uri(dest, size, shard, position, side), data)

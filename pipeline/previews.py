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
from pipeline.lab_cpu import join_lab, lightness_to_gray8
from pipeline.resize_cpu import shrink

GALLERY_DIR = "gallery"
SIZES = {"thumbs": 192, "view": 1024}
QUALITY = {"thumbs": 80, "view": 88}


def preview_uri(dest: str, size: str, shard: str, position: int, side: str) -> str:
    """`size` "thumbs" or "view"; `side` "in" (gray input) or "out" (colour output)."""
    return storage.join(dest, GALLERY_DIR, size, shard, f"{position:06d}-{side}.jpg")


def gray_and_colour(
    lightness: np.ndarray, rgb: np.ndarray | Image.Image
) -> tuple[Image.Image, Image.Image]:
    """L (H, W) in [0, 100] and RGB (H, W, 3) (float in [0, 1], uint8 or uint16, or an 8-bit
    RGB image) -> (8-bit gray, 8-bit RGB) images."""
    return Image.fromarray(lightness_to_gray8(lightness), "L"), rgb_to_pil(rgb)


def fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) scaled, aspect kept, to fit in a `longest` square (never enlarged)."""
    width, height = size
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def previews(
    lightness: np.ndarray,
    colour: Image.Image,
    ab_low: np.ndarray,
    lightness_small: np.ndarray,
    colour_jpeg: bytes | None = None,
    gray_jpeg: bytes | None = None,
) -> dict[tuple[str, str], bytes]:
    """{(size, side): JPEG bytes} for one image, from its L (H, W), its 8-bit colour output,
    the network's ab (2, h, w) and its input L (s, s). A JPEG given as `colour_jpeg` (the
    output's own) or `gray_jpeg` (a gray input's own, shown as it is stored) is the view of an
    image no larger than a view: not encoded twice. The thumbnails are made from what the
    network saw: its input L shrunk to a thumbnail, joined with its ab, i.e. the output's colour
    at a thumbnail's pixels (rather than a filter over all of the output's)."""
    out: dict[tuple[str, str], bytes] = {}
    longest = SIZES["view"]
    small_enough = max(colour.size) <= longest
    if gray_jpeg is not None and small_enough:
        out["view", "in"] = gray_jpeg
    else:
        gray = Image.fromarray(lightness_to_gray8(lightness), "L")
        out["view", "in"] = _jpeg(_shrink(gray, longest), QUALITY["view"])
    if colour_jpeg is not None and small_enough:
        out["view", "out"] = colour_jpeg
    else:
        out["view", "out"] = _jpeg(_shrink(colour, longest), QUALITY["view"])
    width, height = fit(colour.size, SIZES["thumbs"])
    thumb = shrink(lightness_small, (height, width))
    rgb, _ = join_lab(thumb, ab_low, np.uint8)
    out["thumbs", "in"] = _jpeg(Image.fromarray(lightness_to_gray8(thumb), "L"), QUALITY["thumbs"])
    out["thumbs", "out"] = _jpeg(Image.fromarray(rgb, "RGB"), QUALITY["thumbs"])
    return out


def _shrink(image: Image.Image, longest: int) -> Image.Image:
    """As Image.thumbnail, without its full-size copy."""
    return image.resize(fit(image.size, longest), Image.Resampling.LANCZOS, reducing_gap=1.0)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_previews(
    dest: str, shard: str, position: int, images: dict[tuple[str, str], bytes]
) -> None:
    for (size, side), data in images.items():
        storage.write_bytes(preview_uri(dest, size, shard, position, side), data)

"""The small images a person reviews a run with: gray input and colour output of each ok row,
as a thumbnail (longer side <= 192 px) and a view (<= 1024 px), written by the workers beside
the output so that the gallery (pipeline/review/gallery.py) never touches the full-size images.

Names: DEST/gallery/{thumbs,view}/<shard name>/<row position in the shard, 6 digits>-{in,out}.jpg
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.archive import storage
from pipeline.imaging.images import rgb_to_pil
from pipeline.imaging.lab_cpu import join_lab, lightness_to_gray8
from pipeline.imaging.resize_cpu import shrink

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
    rgb: np.ndarray | Image.Image,
    ab_low: np.ndarray,
    lightness_small: np.ndarray,
    colour_jpeg: bytes | None = None,
    gray_jpeg: bytes | None = None,
) -> dict[tuple[str, str], bytes]:
    """{(size, side): JPEG bytes} for one image, from its L (H, W), its RGB output (an 8-bit
    image, or an array as `images.rgb_to_pil` takes), the network's ab (2, h, w) and its input
    L (s, s).

    An image no larger than a view is its own view: `colour_jpeg` (the output's JPEG) and
    `gray_jpeg` (a gray input's own, shown as it is stored) are used as they are, not encoded
    twice. A larger image's views, and every thumbnail, are made at their own size from L
    shrunk to it and the network's ab, as the output is made at full size (`lab_cpu.join_lab`):
    the output's colour at the preview's pixels, without a pass over all of the output's.
    """
    out: dict[tuple[str, str], bytes] = {}
    height, width = lightness.shape
    if max(width, height) <= SIZES["view"]:
        if gray_jpeg is None:
            gray_jpeg = _jpeg(Image.fromarray(lightness_to_gray8(lightness), "L"), QUALITY["view"])
        out["view", "in"] = gray_jpeg
        out["view", "out"] = colour_jpeg or _jpeg(rgb_to_pil(rgb), QUALITY["view"])
    else:
        out["view", "in"], out["view", "out"] = _pair(lightness, ab_low, "view")
    out["thumbs", "in"], out["thumbs", "out"] = _pair(
        lightness_small, ab_low, "thumbs", (width, height)
    )
    return out


def _pair(
    lightness: np.ndarray, ab_low: np.ndarray, size: str, full: tuple[int, int] | None = None
) -> tuple[bytes, bytes]:
    """(gray, colour) JPEGs at preview `size` of an image of `full` size (default: L's own),
    from L (any size at least the preview's) and the network's ab."""
    width, height = fit(full or (lightness.shape[1], lightness.shape[0]), SIZES[size])
    small = shrink(lightness, (height, width))
    rgb, _ = join_lab(small, ab_low, np.uint8)
    gray = Image.fromarray(lightness_to_gray8(small), "L")
    return _jpeg(gray, QUALITY[size]), _jpeg(rgb_to_pil(rgb), QUALITY[size])


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_previews(
    dest: str,
    shard: str,
    position: int,
    images: dict[tuple[str, str], bytes],
    *,
    atomic: bool = False,
) -> None:
    """In place, not atomic: the gallery reads only committed shards, whose previews were all
    written before their stats file (a retried shard writes the same bytes again). `atomic`
    for a committed shard being redone (`--recolorize`): its gallery stays whole meanwhile."""
    for (size, side), data in images.items():
        storage.write_bytes(preview_uri(dest, size, shard, position, side), data, atomic=atomic)


SAMPLE_HEIGHT = 128


def sample_pair(gray: Image.Image, colour: Image.Image) -> Image.Image:
    """gray input | colour output (`previews.gray_and_colour`), SAMPLE_HEIGHT tall: one cell of
    the contact sheet."""
    width = max(1, round(gray.width * SAMPLE_HEIGHT / gray.height))
    pair = Image.new("RGB", (2 * width, SAMPLE_HEIGHT), "white")
    size, lanczos = (width, SAMPLE_HEIGHT), Image.Resampling.LANCZOS
    pair.paste(gray.resize(size, lanczos, reducing_gap=1.5).convert("RGB"), (0, 0))
    pair.paste(colour.resize(size, lanczos, reducing_gap=1.5), (width, 0))
    return pair


def sample_strip(pairs: list[Image.Image]) -> bytes:
    """Pairs side by side as one PNG strip (a row of the contact sheet)."""
    gap = 8
    width = sum(p.width for p in pairs) + gap * (len(pairs) - 1)
    strip = Image.new("RGB", (width, SAMPLE_HEIGHT), "white")
    x = 0
    for p in pairs:
        strip.paste(p, (x, 0))
        x += p.width + gap
    buf = io.BytesIO()  # photos barely deflate: level 1 is 5x faster than _png, 7% larger
    strip.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

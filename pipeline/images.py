"""Image bytes <-> arrays with Pillow, at full resolution, keeping what archivists need.

`decode_image` gives the CIE lightness L (float32, [0, 100]) of the whole image after its EXIF
orientation, the RGB ground truth when the input has colour, the bit depth, and the metadata
to carry over (EXIF, DPI, XMP, IPTC, ICC). `encode_image` writes an RGB result back.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, IptcImagePlugin

from pipeline.color import gray_to_lightness
from pipeline.lab_cpu import any_beyond, levels_to_lightness, rgb8_to_lab, rgbx_of

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own bomb limit (~13k x 13k)
GRAY_TOLERANCE = 2.0  # max |a|, |b| for an RGB file to count as a gray scan stored in colour
SUPPORTED_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "RGB", "RGBA", "P", "PA", "CMYK")


class ImageError(ValueError):
    """Input bytes that cannot become an image; `kind` groups errors in statistics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Decoded:
    lightness: np.ndarray  # (H, W) float32, CIE L in [0, 100]
    rgb: np.ndarray | None  # (H, W, 3) float32 in [0, 1] where the input had colour
    ab: np.ndarray | None  # (2, H, W) float32, the true ab of that colour
    bit_depth: int  # 8 or 16
    metadata: dict[str, Any] = field(default_factory=dict)  # exif, dpi, xmp, iptc, icc_profile
    plain_gray_jpeg: bool = False  # a gray JPEG shown as stored (no rotation): browsers can too

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.lightness.shape[1], self.lightness.shape[0]


def _iptc_records(img: Image.Image) -> bytes | None:
    """The IPTC-IIM datasets of a JPEG (Photoshop APP13) or TIFF (tag 33723) as raw records."""
    if not isinstance(img, ImageFile.ImageFile):
        return None
    try:
        datasets = IptcImagePlugin.getiptcinfo(img)
    except (OSError, SyntaxError, ValueError):
        return None  # a damaged IPTC block is dropped; the pixels still count
    if not datasets:
        return None
    out = bytearray()
    for (record, number), value in sorted(datasets.items()):
        for item in value if isinstance(value, list) else [value]:
            if len(item) < 0x8000:
                out += bytes((0x1C, record, number)) + len(item).to_bytes(2, "big") + item
            else:  # extended dataset: a 4-byte length follows
                out += bytes((0x1C, record, number)) + b"\x80\x04" + len(item).to_bytes(4, "big")
                out += item
    return bytes(out)


def _png_iptc_records(img: Image.Image) -> bytes | None:
    """IPTC from PNG's "Raw profile type iptc" text (as we and ExifTool write it)."""
    text = img.info.get("Raw profile type iptc")
    if not isinstance(text, str):
        return None
    lines = text.strip().splitlines()
    try:
        return bytes.fromhex("".join(lines[2:]))  # "iptc", the length, then hex lines
    except ValueError:
        return None


def read_metadata(img: Image.Image) -> dict[str, Any]:
    """EXIF, DPI, XMP, IPTC and ICC of an open image, as `encode_image` takes them."""
    return _metadata(img, _iptc_records(img) or _png_iptc_records(img))


def _photoshop_iptc_segment(records: bytes) -> bytes:
    """A JPEG APP13 segment holding IPTC records as the Photoshop 0x0404 resource."""
    resource = b"8BIM\x04\x04\x00\x00" + len(records).to_bytes(4, "big") + records
    resource += b"\x00" * (len(records) & 1)  # resources are padded to even length
    body = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + (len(body) + 2).to_bytes(2, "big") + body


def _png_iptc_text(records: bytes) -> bytes:
    """IPTC as PNG's conventional "Raw profile type iptc" text (ImageMagick, ExifTool)."""
    hexed = records.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    return f"\niptc\n{len(records):8d}\n{lines}\n".encode()


def _metadata(img: Image.Image, iptc: bytes | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if iptc:
        meta["iptc"] = iptc
    exif = img.getexif()
    if exif:
        exif.pop(0x0112, None)  # orientation was applied to the pixels: upright from now on
        meta["exif"] = exif.tobytes()
    for key in ("dpi", "icc_profile"):
        if img.info.get(key):
            meta[key] = img.info[key]
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if xmp:
        meta["xmp"] = xmp if isinstance(xmp, bytes) else str(xmp).encode()
    return meta


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on white, as they would be printed."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


@functools.cache
def _lightness_table(bits: int) -> np.ndarray:
    """L of every gray level of a `bits`-bit scan: a lookup replaces the Lab maths per pixel."""
    levels = np.arange(2**bits, dtype=np.float32) / np.float32(2**bits - 1)
    return gray_to_lightness(torch.from_numpy(levels[None])).numpy()[0]


def decode_pil(img: Image.Image) -> Decoded:
    """A PIL image (already open) -> Decoded; see `decode_image`."""
    iptc = _iptc_records(img)  # before the transpose, which drops TIFF tags
    upright = img.getexif().get(0x0112, 1) == 1
    plain_gray_jpeg = img.format == "JPEG" and img.mode == "L" and upright
    if not upright:  # (exif_transpose copies an upright image whole)
        img = ImageOps.exif_transpose(img) or img
    meta = _metadata(img, iptc)
    mode = img.mode
    if mode not in SUPPORTED_MODES:
        raise ImageError("unsupported_mode", f"unsupported image mode {mode!r}")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale; a mode-I image (32-bit) is read as 16-bit values, as PNG/TIFF store them
        levels = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        return Decoded(levels_to_lightness(levels, _lightness_table(16)), None, None, 16, meta)
    if mode in ("1", "L", "LA", "PA"):
        if mode in ("LA", "PA"):
            img = _flatten_alpha(img)
        gray = img if img.mode == "L" else img.convert("L")
        lightness = levels_to_lightness(np.asarray(gray), _lightness_table(8))
        return Decoded(lightness, None, None, 8, meta, plain_gray_jpeg)
    if mode == "RGBA" or (mode == "P" and "transparency" in img.info):
        rgb8 = np.asarray(_flatten_alpha(img))
    else:  # RGB (read as it is: Pillow's convert to its own mode copies), P, CMYK
        rgb8 = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    lightness, ab = rgb8_to_lab(rgb8)
    is_colour = any_beyond(ab, GRAY_TOLERANCE)
    if not is_colour:
        return Decoded(lightness, None, None, 8, meta)
    return Decoded(lightness, np.multiply(rgb8, np.float32(1 / 255), dtype=np.float32), ab, 8, meta)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Encoded bytes -> Decoded. Raises ImageError with a clear message for bad input."""
    if not data:
        raise ImageError("empty", "zero-byte image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    "too_large",
                    f"image is {width}x{height} = {width * height} pixels, above the limit of "
                    f"{max_pixels} (raise --max-pixels to accept it)",
                )
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"corrupt or truncated image: {exc}") from exc
    return decode_pil(img)


SRGB_PROFILE = None  # filled lazily: bytes of an sRGB ICC profile


def _srgb_icc() -> bytes:
    global SRGB_PROFILE
    if SRGB_PROFILE is None:
        from PIL import ImageCms

        SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return SRGB_PROFILE


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """RGB as float in [0, 1], uint8, or uint16 -> uint8 (from 16 bits: the top byte, within
    one level: for previews and metrics, never for output files)."""
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.dtype == np.uint16:
        return (rgb >> 8).astype(np.uint8)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_pil(rgb: np.ndarray | Image.Image) -> Image.Image:
    """(H, W, 3) float in [0, 1], uint8, or uint16 -> 8-bit RGB PIL image (one given as such
    is returned as it is). A view of RGBX pixels (`lab_cpu.join_lab`'s) becomes an "RGBX"
    image over the same memory, which saves as RGB."""
    if isinstance(rgb, Image.Image):
        return rgb
    rgb8 = to_uint8(rgb)
    rgbx = rgbx_of(rgb8)
    if rgbx is not None:  # Pillow's own layout: it uses this memory, no copy
        height, width, _ = rgbx.shape
        return Image.frombuffer("RGBX", (width, height), rgbx, "raw", "RGBX", 0, 1)
    return Image.fromarray(rgb8, "RGB")


def encode_image(
    rgb: np.ndarray | Image.Image,
    fmt: str = "jpeg",
    quality: int = 95,
    bit_depth: int = 8,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    """(H, W, 3) RGB (float in [0, 1], uint8, or uint16 for 16-bit output; or an 8-bit RGB PIL
    image) -> JPEG or PNG
    bytes, with the input's metadata and an sRGB ICC profile (the pixels are sRGB whatever
    the input's profile was). 16-bit output is PNG."""
    meta = dict(metadata or {})
    buf = io.BytesIO()
    if bit_depth == 16:
        return _encode_png16(np.asarray(rgb), meta)
    img = rgb_to_pil(rgb)
    kwargs: dict[str, Any] = {"icc_profile": _srgb_icc()}
    for key in ("exif", "dpi", "xmp"):
        if key in meta:
            kwargs[key] = meta[key]
    if fmt == "jpeg" and "iptc" in meta and len(meta["iptc"]) < 65000:
        kwargs["extra"] = _photoshop_iptc_segment(meta["iptc"])  # one segment holds < 64 KiB
    if fmt == "png" and "iptc" in meta:
        from PIL.PngImagePlugin import PngInfo

        kwargs["pnginfo"] = PngInfo()
        kwargs["pnginfo"].add_text("Raw profile type iptc", _png_iptc_text(meta["iptc"]), zip=True)
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **kwargs)
    elif fmt == "png":
        (img if img.mode == "RGB" else img.convert("RGB")).save(buf, "PNG", **kwargs)
    else:
        raise ValueError(f"unknown output format {fmt!r}: use 'jpeg' or 'png'")
    return buf.getvalue()


def _encode_png16(rgb: np.ndarray, meta: dict[str, Any]) -> bytes:
    """16-bit RGB PNG (Pillow cannot write 16-bit colour PNG); metadata as PNG chunks.

    Rows use PNG's Sub filter, built with numpy, and are deflated by ISA-L (`isal`) at its
    level 1: on a 4000x3000 scan 0.24 s and 35 MB, where pypng took 5.5 s and the standard
    zlib at level 1 takes 1.5 s (docs/benchmarks.md).
    """
    import png  # pypng: chunk framing only
    from isal import isal_zlib

    if rgb.dtype == np.uint16:
        arr = rgb
    elif rgb.dtype == np.uint8:
        arr = rgb.astype(np.uint16) * np.uint16(257)
    else:
        arr = np.round(np.clip(rgb, 0.0, 1.0) * 65535.0).astype(np.uint16)
    h, w, _ = arr.shape
    data = arr.astype(">u2").view(np.uint8).reshape(h, w * 6)
    rows = np.empty((h, 1 + w * 6), np.uint8)
    rows[:, 0] = 1  # Sub: each byte minus the same byte of the pixel to its left, mod 256
    rows[:, 1:7] = data[:, :6]
    np.subtract(data[:, 6:], data[:, :-6], out=rows[:, 7:])
    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes((16, 2, 0, 0, 0))
    chunks = [(b"IHDR", header), *_png_metadata_chunks(meta)]
    chunks += [(b"IDAT", isal_zlib.compress(rows, 1)), (b"IEND", b"")]
    out = io.BytesIO()
    png.write_chunks(out, chunks)
    return out.getvalue()


def _png_metadata_chunks(meta: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """sRGB ICC profile, EXIF, DPI, XMP and IPTC as PNG chunks (they go before IDAT)."""
    import zlib

    chunks: list[tuple[bytes, bytes]] = [
        (b"iCCP", b"sRGB\x00\x00" + zlib.compress(_srgb_icc())),
    ]
    if "exif" in meta:
        exif = meta["exif"]
        chunks.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if "dpi" in meta:
        ppm = [max(1, round(float(d) / 0.0254)) for d in meta["dpi"]]
        chunks.append((b"pHYs", ppm[0].to_bytes(4, "big") + ppm[1].to_bytes(4, "big") + b"\x01"))
    if "xmp" in meta:
        chunks.append((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta["xmp"]))
    if "iptc" in meta:
        text = zlib.compress(_png_iptc_text(meta["iptc"]))
        chunks.append((b"zTXt", b"Raw profile type iptc\x00\x00" + text))
    return chunks

"""Image bytes <-> arrays with Pillow, at full resolution, keeping what archivists need.

`decode_image` gives the CIE lightness L (float32, [0, 100]) of the whole image after its EXIF
orientation, the RGB ground truth when the input has colour, the bit depth, and the metadata
to carry over (EXIF, DPI, XMP, IPTC, ICC). `encode_image` writes an RGB result back.

Metadata never costs the pixels: each kind is read, checked and written on its own, and one
that is damaged (a junk eXIf chunk, an IFD loop, 0/0 resolution, an ICC profile that does not
parse, XMP that is not XML, IPTC records that do not add up) is dropped, never guessed at; its
kind is listed in `Decoded.dropped` (decode) or the caller's `dropped` list (encode) for the
shard's statistics.
"""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

import numpy as np
import torch
from PIL import Image, ImageFile, IptcImagePlugin

from pipeline.imaging.color import gray_to_lightness
from pipeline.imaging.lab_cpu import any_beyond, levels_to_lightness, rgb8_to_lab, rgbx_of

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own bomb limit (~13k x 13k)
GRAY_TOLERANCE = 2.0  # max |a|, |b| for an RGB file to count as a gray scan stored in colour
SUPPORTED_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "RGB", "RGBA", "P", "PA", "CMYK")
METADATA_KINDS = ("exif", "iptc", "xmp", "icc", "dpi")  # what `dropped` lists may name
KIND_OF_KEY = {"exif": "exif", "iptc": "iptc", "xmp": "xmp", "icc_profile": "icc", "dpi": "dpi"}
MAX_DPI = 65535.0  # JPEG's density field; a larger (or under 1/2, or 0/0) one is damage
ORIENTATION = 0x0112
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
XMP_ORIENTATION = re.compile(
    rb'tiff:Orientation="[0-9]"|<tiff:Orientation>[0-9]</tiff:Orientation>'
)


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
    dropped: list[str] = field(default_factory=list)  # METADATA_KINDS found damaged and dropped

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.lightness.shape[1], self.lightness.shape[0]


def _iptc_records(img: Image.Image) -> bytes | None:
    """The IPTC-IIM datasets of a JPEG (Photoshop APP13) or TIFF (tag 33723) as raw records.
    An empty dataset (Pillow gives its value as None) stays an empty dataset. Raises on
    damage (`_guarded` drops the block)."""
    if not isinstance(img, ImageFile.ImageFile):
        return None
    datasets = IptcImagePlugin.getiptcinfo(img)
    if not datasets:
        return None
    out = bytearray()
    for (record, number), value in sorted(datasets.items()):
        for item in value if isinstance(value, list) else [value]:
            item = b"" if item is None else bytes(item)
            if len(item) < 0x8000:
                out += bytes((0x1C, record, number)) + len(item).to_bytes(2, "big") + item
            else:  # extended dataset: a 4-byte length follows
                out += bytes((0x1C, record, number)) + b"\x80\x04" + len(item).to_bytes(4, "big")
                out += item
    return _checked_iptc(bytes(out))


def _checked_iptc(records: bytes) -> bytes:
    """`records` if they are well-formed IPTC-IIM datasets end to end, else ValueError."""
    i = 0
    while i < len(records):
        if records[i] != 0x1C or i + 5 > len(records):
            raise ValueError(f"IPTC: no dataset marker at byte {i}")
        size = int.from_bytes(records[i + 3 : i + 5], "big")
        i += 5
        if size & 0x8000:  # extended: the next (size & 0x7FFF) bytes hold the length
            count = size & 0x7FFF
            if not 1 <= count <= 4 or i + count > len(records):
                raise ValueError("IPTC: bad extended length")
            size = int.from_bytes(records[i : i + count], "big")
            i += count
        if i + size > len(records):
            raise ValueError("IPTC: a dataset runs past the end")
        i += size
    return records


def _png_iptc_records(img: Image.Image) -> bytes | None:
    """IPTC from PNG's "Raw profile type iptc" text (as we and ExifTool write it)."""
    text = img.info.get("Raw profile type iptc")
    if text is None:
        return None
    lines = str(text).strip().splitlines()
    return _checked_iptc(bytes.fromhex("".join(lines[2:])))  # "iptc", the length, hex lines


def read_metadata(img: Image.Image, dropped: list[str] | None = None) -> dict[str, Any]:
    """EXIF, DPI, XMP, IPTC and ICC of an open image, as `encode_image` takes them; the kinds
    found damaged (and left out) are appended to `dropped`."""
    dropped = [] if dropped is None else dropped
    iptc = _guarded("iptc", dropped, lambda: _iptc_records(img) or _png_iptc_records(img))
    exif = _guarded("exif", dropped, lambda: _exif_of(img))
    return _metadata(img, iptc, exif, dropped, _stand_in_dpi(img))


def _guarded(kind: str, dropped: list[str], read: Callable[..., Any], *args: Any) -> Any:
    """`read(*args)`, or None with `kind` noted as dropped when it raises: one damaged kind of
    metadata never costs the image (nor the other kinds)."""
    try:
        return read(*args)
    except Exception:
        dropped.append(kind)
        return None


def _exif_of(img: Image.Image) -> Image.Exif | None:
    """The image's EXIF (None without one); raises when it does not parse."""
    exif = img.getexif()
    return exif if len(exif) else None


def _orientation(exif: Image.Exif | None) -> int:
    """EXIF orientation 1-8; anything else (absent, out of range, not a number) is upright."""
    value = exif.get(ORIENTATION, 1) if exif is not None else 1
    return value if isinstance(value, int) and value in TRANSPOSE else 1


def _exif_bytes(exif: Image.Exif) -> bytes:
    """EXIF without its orientation (the pixels are upright from now on), as bytes that parse
    again, sub-IFDs included; raises on damage."""
    exif.pop(ORIENTATION, None)
    data = exif.tobytes()
    again = Image.Exif()
    again.load(data)
    for ifd in (0x8769, 0x8825, 0xA005):  # Exif, GPS, interoperability
        again.get_ifd(ifd)
    return data


def _checked_dpi(value: Any) -> tuple[float, float]:
    x, y = (float(v) for v in value)
    if not (math.isfinite(x) and math.isfinite(y) and min(x, y) > 0.5 and max(x, y) <= MAX_DPI):
        raise ValueError(f"resolution {value!r} is not a real one")
    return x, y


def _checked_icc(value: Any) -> bytes:
    from PIL import ImageCms

    data = bytes(value)
    ImageCms.ImageCmsProfile(io.BytesIO(data))  # raises on a profile LittleCMS cannot read
    return data


def _checked_xmp(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    # an XMP packet is well-formed XML (namespaces not checked: an undeclared prefix is kept)
    expat.ParserCreate().Parse(data.strip(b"\x00 \t\r\n"), True)
    return data


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


def _stand_in_dpi(img: Image.Image) -> bool:
    """Is Pillow's dpi one that stands in for none? (1, 1) for a TIFF without XResolution;
    (72, 72) for a JPEG whose JFIF gives no unit and whose EXIF no XResolution and
    ResolutionUnit. Asked of the image as opened: a transposed copy has lost its format and
    tags, not its dpi."""
    if img.format == "TIFF":
        return 282 not in getattr(img, "tag_v2", {})
    if img.format != "JPEG" or img.info.get("jfif_unit") or "exif" not in img.info:
        return False
    try:
        exif = img.getexif()
    except Exception:  # damaged EXIF: Pillow's 72 again
        return True
    return 282 not in exif or 296 not in exif


def _metadata(
    img: Image.Image,
    iptc: bytes | None,
    exif: Image.Exif | None,
    dropped: list[str],
    stand_in_dpi: bool,
) -> dict[str, Any]:
    """The metadata to carry, each kind checked on its own; damaged ones go to `dropped`."""
    meta: dict[str, Any] = {}
    if iptc:
        meta["iptc"] = iptc
    if exif is not None:
        data = _guarded("exif", dropped, lambda: _exif_bytes(exif))
        if data:
            meta["exif"] = data
    checks: dict[str, Callable[[Any], Any]] = {"dpi": _checked_dpi, "icc_profile": _checked_icc}
    for key, check in checks.items():
        value = img.info.get(key)
        if key == "dpi" and stand_in_dpi:
            continue
        if value is not None and (key != "icc_profile" or value):
            checked = _guarded(KIND_OF_KEY[key], dropped, check, value)
            if checked is not None:
                meta[key] = checked
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if xmp:
        checked_xmp = _guarded("xmp", dropped, lambda: _checked_xmp(xmp))
        if checked_xmp is not None:
            meta["xmp"] = checked_xmp
    return meta


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """The image turned as its EXIF orientation says, and its XMP's orientation removed."""
    if orientation == 1:
        return img
    turned = img.transpose(TRANSPOSE[orientation])
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = turned.info.get(key)
        if isinstance(value, bytes):
            turned.info[key] = XMP_ORIENTATION.sub(b"", value)
        elif isinstance(value, str):
            turned.info[key] = XMP_ORIENTATION.sub(b"", value.encode()).decode()
    return turned


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
    dropped: list[str] = []
    # Loaded first: Pillow turns a TIFF upright as it loads it (and drops its orientation), so
    # an image opened but not yet loaded would be turned twice. Then, before our transpose,
    # which drops the TIFF tags: what is read from them.
    img.load()
    iptc = _guarded("iptc", dropped, lambda: _iptc_records(img) or _png_iptc_records(img))
    exif = _guarded("exif", dropped, lambda: _exif_of(img))
    stand_in_dpi = _stand_in_dpi(img)
    orientation = _orientation(exif)
    plain_gray_jpeg = img.format == "JPEG" and img.mode == "L" and orientation == 1
    img = _upright(img, orientation)
    meta = _metadata(img, iptc, exif, dropped, stand_in_dpi)
    mode = img.mode
    if mode not in SUPPORTED_MODES:
        raise ImageError("unsupported_mode", f"unsupported image mode {mode!r}")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale; a mode-I image (32-bit) is read as 16-bit values, as PNG/TIFF store them
        levels = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        lightness = levels_to_lightness(levels, _lightness_table(16))
        return Decoded(lightness, None, None, 16, meta, dropped=dropped)
    if mode in ("1", "L", "LA", "PA"):
        if mode in ("LA", "PA"):
            img = _flatten_alpha(img)
        gray = img if img.mode == "L" else img.convert("L")
        lightness = levels_to_lightness(np.asarray(gray), _lightness_table(8))
        return Decoded(lightness, None, None, 8, meta, plain_gray_jpeg, dropped)
    if mode == "RGBA" or (mode == "P" and "transparency" in img.info):
        rgb8 = np.asarray(_flatten_alpha(img))
    else:  # RGB (read as it is: Pillow's convert to its own mode copies), P, CMYK
        rgb8 = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    lightness, ab = rgb8_to_lab(rgb8)
    is_colour = any_beyond(ab, GRAY_TOLERANCE)
    if not is_colour:
        return Decoded(lightness, None, None, 8, meta, dropped=dropped)
    rgb = np.multiply(rgb8, np.float32(1 / 255), dtype=np.float32)
    return Decoded(lightness, rgb, ab, 8, meta, dropped=dropped)


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
    except Exception as exc:  # OSError, SyntaxError, ValueError, zlib.error, struct.error...
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
    dropped: list[str] | None = None,
) -> bytes:
    """(H, W, 3) RGB (float in [0, 1], uint8, or uint16 for 16-bit output; or an 8-bit RGB PIL
    image) -> JPEG or PNG bytes, with the input's metadata and an sRGB ICC profile (the pixels
    are sRGB whatever the input's profile was). 16-bit output is PNG. Metadata the format
    cannot hold (e.g. EXIF over a JPEG segment's 64 KiB) is left out, its kind appended to
    `dropped`: the image is always written."""
    meta = dict(metadata or {})
    dropped = [] if dropped is None else dropped
    if bit_depth == 16:
        return _encode_png16(np.asarray(rgb), meta, dropped)
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"unknown output format {fmt!r}: use 'jpeg' or 'png'")
    img = rgb_to_pil(rgb)
    if fmt == "png" and img.mode != "RGB":
        img = img.convert("RGB")
    extras = _metadata_kwargs(fmt, meta)
    try:
        return _save(img, fmt, quality, extras)
    except Exception:
        # which kinds fail, each on its own (on a tiny image: the pixels are not in question)
        tiny = Image.new("RGB", (8, 8))
        bad = []
        for key, kwargs in extras.items():
            try:
                _save(tiny, fmt, quality, {key: kwargs})
            except Exception:
                bad.append(key)
        if not bad:
            raise
        dropped.extend(KIND_OF_KEY[key] for key in bad)
        return _save(img, fmt, quality, {k: v for k, v in extras.items() if k not in bad})


def _metadata_kwargs(fmt: str, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pillow's save arguments for each kind of metadata, by its key in `meta`."""
    extras: dict[str, dict[str, Any]] = {}
    for key in ("exif", "dpi") if fmt == "png" else ("exif", "dpi", "xmp"):
        if key in meta:
            extras[key] = {key: meta[key]}
    if fmt == "jpeg" and "iptc" in meta and len(meta["iptc"]) < 65000:
        extras["iptc"] = {"extra": _photoshop_iptc_segment(meta["iptc"])}  # one segment: 64 KiB
    if fmt == "png" and "xmp" in meta:  # Pillow's PNG writer takes no xmp: its own iTXt chunk
        extras["xmp"] = {"png_text": ("itxt", "XML:com.adobe.xmp", meta["xmp"].decode())}
    if fmt == "png" and "iptc" in meta:
        text = _png_iptc_text(meta["iptc"])
        extras["iptc"] = {"png_text": ("text", "Raw profile type iptc", text)}
    return extras


def _save(img: Image.Image, fmt: str, quality: int, extras: dict[str, dict[str, Any]]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    kwargs: dict[str, Any] = {"icc_profile": _srgb_icc()}
    texts = PngInfo()
    for extra in extras.values():
        if "png_text" in extra:
            kind, key, value = extra["png_text"]
            if kind == "itxt":
                texts.add_itxt(key, value)
            else:
                texts.add_text(key, value, zip=True)
            kwargs["pnginfo"] = texts
        else:
            kwargs.update(extra)
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **kwargs)
    else:
        img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _encode_png16(rgb: np.ndarray, meta: dict[str, Any], dropped: list[str]) -> bytes:
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
    chunks = [(b"IHDR", header), *_png_metadata_chunks(meta, dropped)]
    chunks += [(b"IDAT", isal_zlib.compress(rows, 1)), (b"IEND", b"")]
    out = io.BytesIO()
    png.write_chunks(out, chunks)
    return out.getvalue()


def _png_metadata_chunks(
    meta: dict[str, Any], dropped: list[str] | None = None
) -> list[tuple[bytes, bytes]]:
    """sRGB ICC profile, EXIF, DPI, XMP and IPTC as PNG chunks (they go before IDAT); a kind
    that cannot be written is left out and appended to `dropped`."""
    import zlib

    dropped = [] if dropped is None else dropped

    def exif(value: bytes) -> tuple[bytes, bytes]:
        return b"eXIf", bytes(value[6:] if value.startswith(b"Exif\x00\x00") else value)

    def dpi(value: Any) -> tuple[bytes, bytes]:
        ppm = [max(1, round(float(d) / 0.0254)) for d in value]
        return b"pHYs", ppm[0].to_bytes(4, "big") + ppm[1].to_bytes(4, "big") + b"\x01"

    def xmp(value: bytes) -> tuple[bytes, bytes]:
        return b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + bytes(value)

    def iptc(value: bytes) -> tuple[bytes, bytes]:
        return b"zTXt", b"Raw profile type iptc\x00\x00" + zlib.compress(_png_iptc_text(value))

    chunks: list[tuple[bytes, bytes]] = [
        (b"iCCP", b"sRGB\x00\x00" + zlib.compress(_srgb_icc())),
    ]
    makers: dict[str, Callable[[Any], tuple[bytes, bytes]]] = {
        "exif": exif, "dpi": dpi, "xmp": xmp, "iptc": iptc,
    }  # fmt: skip
    for key, make in makers.items():
        if key in meta:
            chunk = _guarded(KIND_OF_KEY[key], dropped, make, meta[key])
            if chunk is not None:
                chunks.append(chunk)
    return chunks

"""Damaged metadata never costs the pixels: real photos (scikit-image's) as JPEG, PNG, TIFF and
WebP carrying EXIF, IPTC, XMP, ICC and DPI, their metadata damaged on purpose (wrong offsets and
counts, empty or overlong values, truncated segments, IFD loops, junk eXIf, 0/0 resolution) and
at random (bytes changed inside the metadata segments only). For every file whose pixels Pillow
reads: `decode_image` gives those pixels, the pipeline's encoder writes a file that opens, and
whatever metadata it kept is well formed (EXIF parses, ICC is a profile, XMP is XML, IPTC adds
up): read back, nothing more is dropped."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from xml.parsers import expat

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, TiffImagePlugin
from PIL.TiffImagePlugin import IFDRational
from skimage import data

from pipeline.imaging.images import (
    KIND_OF_KEY,
    _photoshop_iptc_segment,
    _png_iptc_text,
    decode_image,
    encode_image,
)

PHOTOS = ("astronaut", "coffee", "chelsea")
FORMATS = ("jpeg", "png", "tiff", "webp")
XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/jpeg"/></rdf:RDF>'
    b'</x:xmpmeta><?xpacket end="w"?>'
)
IPTC = (
    bytes((0x1C, 2, 5)) + (9).to_bytes(2, "big") + b"the title"
    + bytes((0x1C, 2, 120)) + (11).to_bytes(2, "big") + b"the caption"
)  # fmt: skip


@functools.cache
def photo(name: str) -> Image.Image:
    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    img.thumbnail((48, 48))
    return img


@functools.cache
def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@functools.cache
def good_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0110] = "Model 1"
    exif[0x0131] = "editor"
    exif.get_ifd(0x8769)[0x9003] = "2001:02:03 04:05:06"  # Exif IFD: DateTimeOriginal
    exif.get_ifd(0x8769)[0x829A] = 1 / 125  # ExposureTime
    exif.get_ifd(0x8825)[1] = "N"  # GPS IFD
    return exif.tobytes()


def looped_exif() -> bytes:
    """IFD0 whose Exif-IFD pointer and next-IFD offset both point back at IFD0."""
    entry = struct.pack("<HHII", 0x8769, 4, 1, 8)
    return (
        b"Exif\x00\x00II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", 1)
        + entry
        + (struct.pack("<I", 8))
    )


def iptc_dataset(record: int, number: int, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return bytes((0x1C, record, number)) + (size & 0xFFFF).to_bytes(2, "big") + value


def flip(payload: bytes, changes: list[tuple[int, int]]) -> bytes:
    """`payload` with some of its bytes replaced (positions taken modulo its length)."""
    if not payload:
        return payload
    out = bytearray(payload)
    for position, value in changes:
        out[position % len(out)] = value
    return bytes(out)


# --- damaged kinds of metadata, structured and random ------------------------------------
CHANGES = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12)


def exif_payloads() -> st.SearchStrategy[bytes | None]:
    good = good_exif()
    structured = st.sampled_from(
        [
            good,
            b"Exif\x00\x00",  # empty
            b"junk that is no TIFF header",
            good[: len(good) // 2],  # truncated
            good[:14],
            looped_exif(),
            good[:10] + struct.pack("<I", 0xFFFFFF00) + good[14:],  # IFD0 offset far away
            good[:16] + struct.pack("<H", 0xFFFF) + good[18:],  # first entry's type: wrong
            good[:20] + struct.pack("<I", 0x7FFFFFFF) + good[24:],  # first entry's count: huge
            good + b"\x00" * 70000,  # overlong: above a JPEG segment's 64 KiB
        ]
    )
    randomised = st.builds(flip, st.just(good), CHANGES)
    return st.one_of(st.none(), structured, randomised)


def iptc_payloads() -> st.SearchStrategy[bytes | None]:
    structured = st.sampled_from(
        [
            IPTC,
            iptc_dataset(2, 120, b""),  # an empty value
            IPTC + iptc_dataset(2, 25, b""),
            iptc_dataset(2, 120, b"short", length=500),  # length beyond the block
            IPTC[:7],  # truncated
            b"\x1c",
            iptc_dataset(2, 120, b"x" * 40000),  # overlong for one segment's dataset
            b"no IPTC here at all",
        ]
    )
    return st.one_of(st.none(), structured, st.builds(flip, st.just(IPTC), CHANGES))


def xmp_payloads() -> st.SearchStrategy[bytes | None]:
    structured = st.sampled_from(
        [XMP, b"", b"<x:xmpmeta", b"not xml at all", XMP[: len(XMP) // 2], XMP + b" " * 70000]
    )
    return st.one_of(st.none(), structured, st.builds(flip, st.just(XMP), CHANGES))


def icc_payloads() -> st.SearchStrategy[bytes | None]:
    icc = srgb_icc()
    structured = st.sampled_from(
        [
            icc,
            icc[:128],
            icc[: len(icc) // 2],
            b"not a profile",
            b"\x00" * 200,
            struct.pack(">I", 0x7FFFFFFF) + icc[4:],
        ]
    )
    return st.one_of(st.none(), structured, st.builds(flip, st.just(icc), CHANGES))


DPIS = st.one_of(
    st.none(),
    st.sampled_from([(300, 300), (0, 0), (72, 0), (1e9, 1e9), (float("nan"), 72), (-5, -5)]),
)


# --- containers --------------------------------------------------------------------------
def build(
    name: str,
    fmt: str,
    exif: bytes | None,
    iptc: bytes | None,
    xmp: bytes | None,
    icc: bytes | None,
    dpi: tuple[float, float] | None,
) -> bytes | None:
    """The photo in `fmt` with this metadata, as Pillow writes it (None if Pillow refuses)."""
    img = photo(name)
    kwargs: dict = {}
    if icc is not None:
        kwargs["icc_profile"] = icc
    if exif is not None and fmt != "tiff":
        kwargs["exif"] = exif
    if xmp is not None and fmt in ("jpeg", "webp"):
        kwargs["xmp"] = xmp
    if dpi is not None and fmt != "tiff":
        kwargs["dpi"] = dpi
    if fmt == "jpeg" and iptc is not None:
        kwargs["extra"] = _photoshop_iptc_segment(iptc)
    if fmt == "png" and (iptc is not None or xmp is not None):
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        if iptc is not None:
            info.add_text("Raw profile type iptc", _png_iptc_text(iptc).decode(), zip=True)
        if xmp is not None:
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("latin-1"))
        kwargs["pnginfo"] = info
    if fmt == "tiff":
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        if iptc is not None:
            tags[33723] = iptc
            tags.tagtype[33723] = 7  # UNDEFINED
        if xmp is not None:
            tags[700] = xmp
            tags.tagtype[700] = 1  # BYTE
        if dpi is not None:
            tags[282], tags[283], tags[296] = (
                IFDRational(*_ratio(dpi[0])),
                IFDRational(*_ratio(dpi[1])),
                2,
            )
        kwargs["tiffinfo"] = tags
    buf = io.BytesIO()
    try:
        img.save(buf, {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "webp": "WEBP"}[fmt], **kwargs)
    except Exception:
        return None
    return buf.getvalue()


def _ratio(value: float) -> tuple[int, int]:
    if value != value:  # NaN: the 0/0 of a damaged TIFF
        return 0, 0
    return (int(value), 1) if value else (0, 0)


def damage_segments(blob: bytes, changes: list[tuple[int, int]]) -> bytes:
    """Random bytes inside the metadata segments only: JPEG APPn (n >= 1) payloads, keeping
    their lengths; PNG metadata chunks' data, their CRCs made right again (so Pillow's own
    checks still pass and the damage reaches the metadata readers)."""
    if not changes:
        return blob
    out = bytearray(blob)
    if blob[:2] == b"\xff\xd8":
        i = 2
        spans = []
        while i + 4 <= len(blob) and blob[i] == 0xFF and blob[i + 1] not in (0xDA, 0xD9):
            length = int.from_bytes(blob[i + 2 : i + 4], "big")
            if 0xE1 <= blob[i + 1] <= 0xEF or blob[i + 1] == 0xED:
                spans.append((i + 4, i + 2 + length))
            i += 2 + length
        for k, (position, value) in enumerate(changes):
            if spans:
                start, end = spans[k % len(spans)]
                if end > start:
                    out[start + position % (end - start)] = value
        return bytes(out)
    if blob[:8] == b"\x89PNG\r\n\x1a\n":
        i, chunks = 8, []
        while i + 8 <= len(blob):
            length = int.from_bytes(blob[i : i + 4], "big")
            kind = blob[i + 4 : i + 8]
            if kind in (b"eXIf", b"iCCP", b"tEXt", b"zTXt", b"iTXt", b"pHYs"):
                chunks.append((i, length))
            i += 12 + length
        for k, (position, value) in enumerate(changes):
            if chunks:
                start, length = chunks[k % len(chunks)]
                if length:
                    out[start + 8 + position % length] = value
        for start, length in chunks:
            crc = zlib.crc32(out[start + 4 : start + 8 + length])
            out[start + 8 + length : start + 12 + length] = crc.to_bytes(4, "big")
        return bytes(out)
    return blob


# --- the property ------------------------------------------------------------------------
def check(blob: bytes) -> str:
    try:
        ref = Image.open(io.BytesIO(blob))
        ref.load()
        pixels = ref.convert("RGB")
    except Exception:
        return "Pillow cannot read the pixels"  # nor can we: not ours to keep
    decoded = decode_image(blob)  # an ok row: never an error for its metadata
    assert decoded.rgb is not None
    got = np.round(decoded.rgb * 255).astype(np.uint8)
    turns = [pixels, *(pixels.transpose(t) for t in Image.Transpose)]  # EXIF orientation
    assert any(np.array_equal(got, np.asarray(t)) for t in turns), "pixels changed"
    for fmt in ("jpeg", "png"):
        left_out: list[str] = []  # what the format cannot hold (e.g. over 64 KiB in JPEG)
        out = encode_image(got, fmt, metadata=decoded.metadata, dropped=left_out)
        kept = {k for k in decoded.metadata if KIND_OF_KEY[k] not in left_out}
        written = Image.open(io.BytesIO(out))
        written.load()
        assert written.size == (got.shape[1], got.shape[0])
        again = decode_image(out)
        # (without a dpi of its own, Pillow reads a JPEG's dpi from its EXIF's resolution
        # tags, which may be odd values of a well-formed EXIF: not metadata we kept as dpi)
        rereads = [k for k in again.dropped if not (k == "dpi" and "dpi" not in kept)]
        assert rereads == [], f"{fmt} output kept damaged metadata: {again.dropped}"
        ImageCms.ImageCmsProfile(io.BytesIO(written.info["icc_profile"]))
        if "exif" in kept:
            exif = written.getexif()
            exif.get_ifd(0x8769)
            exif.get_ifd(0x8825)
        if "xmp" in kept:
            xmp = written.info.get("xmp") or written.info.get("XML:com.adobe.xmp")
            text = xmp if isinstance(xmp, bytes) else str(xmp).encode()
            expat.ParserCreate().Parse(text.strip(b"\x00 \t\r\n"), True)
        assert set(again.metadata) >= kept - {"icc_profile"}  # (ours is sRGB: see images.py)
    return "decoded, metadata dropped" if decoded.dropped else "decoded, all metadata kept"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "case",
    ["empty_iptc", "junk_exif", "looped_exif", "zero_dpi", "bad_icc", "truncated", "all_good"],
)
def test_known_damage_keeps_the_pixels(fmt: str, case: str) -> None:
    exif, iptc, xmp, icc, dpi = good_exif(), IPTC, XMP, srgb_icc(), (300.0, 300.0)
    if case == "empty_iptc":
        iptc = IPTC + iptc_dataset(2, 25, b"")
    elif case == "junk_exif":
        exif = b"this is no TIFF header"
    elif case == "looped_exif":
        exif = looped_exif()
    elif case == "zero_dpi":
        dpi = (0.0, 0.0) if fmt != "tiff" else (float("nan"), float("nan"))
    elif case == "bad_icc":
        icc = icc[: len(icc) // 2]
    elif case == "truncated":
        exif, iptc, xmp = exif[:20], IPTC[:7], XMP[:40]
    blob = build("coffee", fmt, exif, iptc, xmp, icc, dpi)
    assert blob is not None
    check(blob)
    if case == "all_good":  # nothing to drop: everything is carried
        assert decode_image(blob).dropped == []


def test_dropped_kinds_are_named() -> None:
    blob = build("chelsea", "png", b"junk exif", None, None, None, None)
    assert blob is not None and decode_image(blob).dropped == ["exif"]
    blob = build("chelsea", "tiff", None, None, None, None, (float("nan"), float("nan")))
    assert blob is not None and decode_image(blob).dropped == ["dpi"]
    blob = build("chelsea", "jpeg", None, None, b"not xml", b"not a profile", None)
    assert blob is not None and sorted(decode_image(blob).dropped) == ["icc", "xmp"]


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    name=st.sampled_from(PHOTOS),
    fmt=st.sampled_from(FORMATS),
    exif=exif_payloads(),
    iptc=iptc_payloads(),
    xmp=xmp_payloads(),
    icc=icc_payloads(),
    dpi=DPIS,
    segment_changes=CHANGES,
)
def test_fuzzed_metadata_never_costs_the_pixels(
    name: str,
    fmt: str,
    exif: bytes | None,
    iptc: bytes | None,
    xmp: bytes | None,
    icc: bytes | None,
    dpi: tuple[float, float] | None,
    segment_changes: list[tuple[int, int]],
) -> None:
    blob = build(name, fmt, exif, iptc, xmp, icc, dpi)
    if blob is None:
        event("Pillow would not write it")
        return  # nothing to read
    event(f"{fmt}: {check(damage_segments(blob, segment_changes))}")

import io

import numpy as np
import pytest
from PIL import Image, IptcImagePlugin, TiffImagePlugin
from skimage import color

from pipeline.imaging.images import ImageError, decode_image, encode_image


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_gives_lightness_and_ground_truth(photos):
    rgb = photos["astronaut"]
    dec = decode_image(_bytes(Image.fromarray(rgb)))
    assert dec.size == (rgb.shape[1], rgb.shape[0]) and dec.bit_depth == 8
    np.testing.assert_allclose(dec.rgb, rgb / 255.0, atol=1e-6)
    assert np.abs(dec.lightness - color.rgb2lab(rgb / 255.0)[..., 0]).max() < 1e-3


def test_gray_modes_give_no_ground_truth(photos):
    gray = Image.fromarray(photos["coffee"]).convert("L")
    for img in (gray, gray.convert("1"), gray.convert("LA"), gray.convert("RGB")):
        dec = decode_image(_bytes(img))
        assert dec.rgb is None, img.mode
        assert dec.lightness.shape == (gray.height, gray.width)
    ref = color.rgb2lab(np.repeat(np.asarray(gray)[..., None] / 255.0, 3, -1))[..., 0]
    assert np.abs(decode_image(_bytes(gray)).lightness - ref).max() < 1e-3


def test_16bit_gray_is_scaled_correctly():
    ramp = np.linspace(0, 65535, 256 * 16).astype(np.uint16).reshape(16, 256)
    dec = decode_image(_bytes(Image.fromarray(ramp)))
    assert dec.bit_depth == 16
    ref = color.rgb2lab(np.repeat((ramp / 65535.0)[..., None], 3, -1))[..., 0]
    assert np.abs(dec.lightness - ref).max() < 1e-3
    assert dec.lightness.max() == pytest.approx(100.0, abs=1e-3)


def test_rgba_is_composited_on_white_and_palette_and_cmyk_decode(photos):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    dec = decode_image(_bytes(rgba))
    assert dec.rgb is None and np.allclose(dec.lightness, 100.0, atol=1e-3)
    img = Image.fromarray(photos["chelsea"])
    for variant, fmt in ((img.convert("P"), "PNG"), (img.convert("CMYK"), "JPEG"), (img, "WEBP")):
        dec = decode_image(_bytes(variant, fmt))
        assert dec.rgb is not None and dec.size == img.size


def test_exif_orientation_is_applied(photos):
    img = Image.fromarray(photos["coffee"])  # 600 x 400
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    exif[0x010F] = "ScanCo"
    dec = decode_image(_bytes(img, "JPEG", exif=exif.tobytes()))
    assert dec.size == (img.height, img.width)
    # orientation is normalised in the metadata we carry over (absent means upright)
    carried = Image.Exif()
    carried.load(dec.metadata["exif"])
    assert carried.get(0x0112, 1) == 1 and carried[0x010F] == "ScanCo"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not_an_image"),
    ],
)
def test_bad_bytes_raise_clear_errors(data, kind):
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert err.value.kind == kind


def test_truncated_and_bomb(photos):
    data = _bytes(Image.fromarray(photos["astronaut"]), "JPEG")
    with pytest.raises(ImageError) as err:
        decode_image(data[: len(data) // 3])
    assert err.value.kind == "corrupt"
    with pytest.raises(ImageError, match="max-pixels") as err:
        decode_image(data, max_pixels=1000)
    assert err.value.kind == "too_large"


def test_encode_keeps_size_dpi_exif_and_adds_srgb_profile(photos):
    rgb = photos["chelsea"] / 255.0
    exif = Image.Exif()
    exif[0x010F] = "ScanCo"  # Make
    meta = {"exif": exif.tobytes(), "dpi": (300, 300)}
    for fmt in ("jpeg", "png"):
        out = Image.open(io.BytesIO(encode_image(rgb, fmt, metadata=meta)))
        assert out.size == (rgb.shape[1], rgb.shape[0])
        assert out.info.get("icc_profile")
        assert round(out.info["dpi"][0]) == 300
        assert out.getexif()[0x010F] == "ScanCo"
    png16 = Image.open(io.BytesIO(encode_image(rgb, bit_depth=16, metadata=meta)))
    assert png16.format == "PNG" and png16.info.get("icc_profile")
    assert round(png16.info["dpi"][0]) == 300
    with pytest.raises(ValueError, match="jpeg"):
        encode_image(rgb, "gif")


def test_iptc_from_a_tiff_travels_to_jpeg_and_png_outputs():
    # caption (2:120) and two keywords (2:25), as a scanning station would write them
    records = b"\x1c\x02\x78\x00\x0bA caption !\x1c\x02\x19\x00\x04kw-1\x1c\x02\x19\x00\x04kw-2"
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[33723] = records
    tags.tagtype[33723] = 7  # UNDEFINED: raw bytes
    src = _bytes(Image.new("L", (40, 30), 120), "TIFF", tiffinfo=tags)
    expected = IptcImagePlugin.getiptcinfo(Image.open(io.BytesIO(src)))
    assert expected == {(2, 120): b"A caption !", (2, 25): [b"kw-1", b"kw-2"]}
    meta = decode_image(src).metadata
    rgb = np.full((30, 40, 3), 0.5, np.float32)

    jpeg_bytes = encode_image(rgb, "jpeg", metadata=meta)
    assert IptcImagePlugin.getiptcinfo(Image.open(io.BytesIO(jpeg_bytes))) == expected
    assert decode_image(jpeg_bytes).metadata["iptc"] == meta["iptc"]  # and JPEG inputs keep it
    # PNG has no IPTC chunk: the "Raw profile type iptc" text that ExifTool and ImageMagick read
    for png_bytes in (
        encode_image(rgb, "png", metadata=meta),
        encode_image(rgb, bit_depth=16, metadata=meta),
    ):
        text = Image.open(io.BytesIO(png_bytes)).info["Raw profile type iptc"]
        name, length, *hex_lines = text.split()
        assert name == "iptc" and int(length) == len(meta["iptc"])
        assert bytes.fromhex("".join(hex_lines)) == meta["iptc"]


def test_16_bit_png_decodes_elsewhere_to_the_exact_pixels_written():
    """Our 16-bit PNG encoder (Sub filter, ISA-L deflate) read back by pypng, not by us: bit
    depth 16 and every sample equal to the array given (all 16 bits of each)."""
    import png

    rng = np.random.default_rng(0)
    levels = rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)
    levels[0, :3] = [[0, 0, 0], [65535, 65535, 65535], [0x00FF, 0xFF00, 0x0101]]
    as_float = rng.uniform(0.0, 1.0, (20, 31, 3))
    as_bytes = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    cases = [
        (levels, levels),
        (as_float, np.round(as_float * 65535.0).astype(np.uint16)),
        (as_bytes, as_bytes.astype(np.uint16) * 257),
    ]
    for given, expected in cases:
        width, height, rows, info = png.Reader(bytes=encode_image(given, bit_depth=16)).read()
        assert (width, height) == (expected.shape[1], expected.shape[0])
        assert info["bitdepth"] == 16 and info["planes"] == 3 and not info["greyscale"]
        decoded = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(expected.shape)
        np.testing.assert_array_equal(decoded, expected)
    # and the low byte matters: odd values survive (a high-byte-only encoder would drop them)
    assert (levels % 256 != 0).mean() > 0.9


def test_a_rotated_tiff_keeps_only_its_own_dpi(photos):
    """A TIFF with EXIF orientation 6 is turned upright once, and its resolution travels as it
    is, none or 300 dpi: never Pillow's stand-ins (1 dpi for a TIFF without XResolution, then
    72 for our JPEG of it, whose EXIF has none), through decoding, our outputs and export.
    Decoded from bytes, or handed over opened but not loaded (`decode_pil`, as
    `colorize_images` takes images)."""
    from pipeline.archive.export import convert
    from pipeline.imaging.images import decode_pil

    photo = Image.fromarray(photos["coffee"]).resize((60, 40))
    orientation = Image.Exif()
    orientation[0x0112] = 6  # turn 90 degrees clockwise to view
    for dpi in (None, (300.0, 300.0)):
        src = _bytes(photo, "TIFF", exif=orientation, **({"dpi": dpi} if dpi else {}))
        assert Image.open(io.BytesIO(src)).info["dpi"] == (dpi or (1, 1))  # Pillow's reading
        for dec in (decode_image(src), decode_pil(Image.open(io.BytesIO(src)))):
            assert dec.size == (40, 60)  # upright, turned once
            assert dec.metadata.get("dpi") == dpi
            assert dec.rgb is not None
            jpeg = encode_image(dec.rgb, "jpeg", metadata=dec.metadata)
            outputs = {
                "jpeg": jpeg,
                "png": encode_image(dec.rgb, "png", metadata=dec.metadata),
                "png16": encode_image(dec.rgb, bit_depth=16, metadata=dec.metadata),
                "exported tiff": convert(jpeg, "tiff", 95),
                "exported png": convert(jpeg, "png", 95),
            }
            for name, data in outputs.items():
                out = Image.open(io.BytesIO(data))
                assert out.size == (40, 60), name
                if dpi is None:
                    assert out.info.get("jfif_unit", 0) == 0, name  # JPEG: no unit, no dpi
                    assert "dpi" not in out.info or name == "jpeg", (name, out.info["dpi"])
                    assert decode_image(data).metadata.get("dpi") is None, name
                else:
                    assert [round(d) for d in out.info["dpi"]] == [300, 300], name

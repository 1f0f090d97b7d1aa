"""Export: a colorized archive back as image files in the input's layout and containers."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image
from skimage import color, data

from flows import cli
from flows.colorize import ConfigError, colorize_archive
from flows.export import export_archive
from pipeline.archive import storage
from pipeline.archive.export import UnsafePath, safe_relative_path, target
from tests.test_archive import ray_local  # noqa: F401 - the shared local Ray fixture
from tests.test_colorize import L_TOLERANCE

pytestmark = pytest.mark.slow
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:title>Accession 1907.3</dc:title></x:xmpmeta>'


def scan_tree(root: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    """A collection as museums keep it: subfolders of JPEG, PNG and 16-bit TIFF scans with
    resolution, EXIF and XMP. Returns {relative path: (Pillow format, size)}."""
    files: dict[str, tuple[str, tuple[int, int]]] = {}

    def save(rel: str, img: Image.Image, fmt: str, **kwargs) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, fmt, **kwargs)
        files[rel] = (fmt, img.size)

    exif = Image.Exif()
    exif[0x010E] = "Harbour, 1907"  # ImageDescription
    gray = Image.fromarray(data.camera()).resize((180, 140))
    save("1907/box-01/acc-0001.jpg", gray, "JPEG", quality=92, dpi=(600, 600), exif=exif,
         xmp=XMP)  # fmt: skip
    save("1907/box-01/acc-0002.png", Image.fromarray(data.coffee()).resize((150, 100)), "PNG",
         dpi=(300, 300))  # fmt: skip
    scan16 = (data.camera()[::3, ::3].astype(np.uint16) * 257).astype(np.uint16)
    save("1912/acc-0003.tif", Image.fromarray(scan16), "TIFF", dpi=(1200, 1200))
    save("1912/acc-0004.bmp", gray.convert("RGB"), "BMP")
    (root / "1912" / "acc-0005.jpg").write_bytes(b"not a scan")  # a broken file: an error row
    return files


def test_safe_paths_and_targets():
    assert safe_relative_path("1907/./box//a.jpg") == "1907/box/a.jpg"
    for hostile in ("../a.jpg", "a/../../b.jpg", "/etc/passwd", "C:/x.jpg", "a\x00.jpg",
                    "a\\..\\b.jpg", "", "./"):  # fmt: skip
        with pytest.raises(UnsafePath):
            safe_relative_path(hostile)
    assert target("a/b.TIF") == ("a/b.TIF", "tiff")
    assert target("a/b.webp") == ("a/b.png", "png")
    assert target("scan-17") == ("scan-17.png", "png")


def test_folder_tree_to_files_in_the_same_layout(tmp_path, ray_local):  # noqa: F811
    files = scan_tree(tmp_path / "scans")
    dest, out = tmp_path / "colour", tmp_path / "colour-files"
    with pytest.raises(SystemExit) as code:
        cli.main(["colorize", str(tmp_path / "scans"), str(dest), "--export", str(out)])
    assert code.value.code == 0

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                     and not p.name.startswith("_") and p.parent.name != "_export")  # fmt: skip
    expected = sorted(rel if not rel.endswith(".bmp") else rel[:-4] + ".png" for rel in files)
    assert written == expected
    for rel, (fmt, size) in files.items():
        exported = out / (rel if not rel.endswith(".bmp") else rel[:-4] + ".png")
        img = Image.open(exported)
        assert img.format == ("PNG" if fmt == "BMP" else fmt) and img.size == size, rel
        assert img.mode == "RGB" or rel.endswith(".tif")
    jpeg = Image.open(out / "1907/box-01/acc-0001.jpg")
    assert jpeg.info["dpi"] == pytest.approx((600, 600))
    assert jpeg.getexif()[0x010E] == "Harbour, 1907" and b"Accession 1907.3" in jpeg.info["xmp"]
    assert jpeg.info.get("icc_profile")  # the pixels are sRGB, and say so
    png_dpi = Image.open(out / "1907/box-01/acc-0002.png").info["dpi"]
    assert png_dpi == pytest.approx((300, 300), rel=1e-3)  # PNG stores pixels per metre
    with tifffile.TiffFile(out / "1912/acc-0003.tif") as tif:
        page = tif.pages[0]
        pixels = page.asarray()
        assert pixels.dtype == np.uint16 and pixels.shape == (171, 171, 3)  # 16 bits kept
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.tags["XResolution"].value == (1200, 1)
        assert page.tags["InterColorProfile"].value
    # the colour keeps the scan's L to 16-bit rounding (L_TOLERANCE's derivation), wherever no
    # channel was clipped to the sRGB gamut (a clipped channel ends at 0 or 65535)
    scan = (data.camera()[::3, ::3].astype(np.float64) * 257) / 65535.0
    l_scan = color.rgb2lab(np.repeat(scan[..., None], 3, axis=-1))[..., 0]
    l_out = color.rgb2lab(pixels / 65535.0)[..., 0]
    unclipped = np.all((pixels > 0) & (pixels < 65535), axis=-1)
    assert unclipped.mean() > 0.5
    delta = np.abs(l_out - l_scan)[unclipped]
    assert delta.max() <= L_TOLERANCE[np.uint16], delta.max()

    with (out / "_errors.csv").open() as f:
        errors = list(csv.DictReader(f))
    assert [(e["id"], e["kind"]) for e in errors] == [("1912/acc-0005.jpg", "not_an_image")]

    # a re-run exports nothing new and touches no file
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.suffix != ".csv"}
    again = export_archive(str(dest), str(out))
    assert again["exported"] == 0 and again["shards_skipped"] == again["shards"] == 1
    assert again["files"] == len(files) and again["errors"] == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.suffix != ".csv"} == before

    # OUT inside SOURCE (or DEST itself) is refused before any work
    for bad in (tmp_path / "scans" / "colour", tmp_path / "scans", dest):
        with pytest.raises(ConfigError, match="choose a folder outside"):
            export_archive(str(dest), str(bad))
    assert not (tmp_path / "scans" / "colour").exists()


def test_hostile_names_are_error_rows_and_s3_on_both_sides(tmp_path, s3_server, ray_local):  # noqa: F811
    bucket = f"export-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    storage.configure(s3_server)
    buf = io.BytesIO()
    Image.fromarray(data.camera()).resize((64, 64)).save(buf, "JPEG")
    paths = ["good/ok.jpg", "../escape.jpg", "/etc/cron.d/x.jpg", "C:/Windows/x.jpg",
             "nul\x00.jpg", "deep/../../up.jpg"]  # fmt: skip
    table = pa.table({"id": [f"row-{i}" for i in range(len(paths))],
                      "image": [buf.getvalue()] * len(paths), "path": paths})  # fmt: skip
    local = tmp_path / "src.parquet"
    pq.write_table(table, local)
    storage.write_bytes(f"s3://{bucket}/src/part-0.parquet", local.read_bytes())
    dest, out = f"s3://{bucket}/colour", f"s3://{bucket}/files"
    colorize_archive(f"s3://{bucket}/src", dest, s3_endpoint_url=s3_server)
    result = export_archive(dest, out, s3_endpoint_url=s3_server)
    assert result["files"] == 1 and result["errors"] == len(paths) - 1
    keys = sorted(o["Key"] for o in boto3.client("s3", endpoint_url=s3_server)
                  .list_objects_v2(Bucket=bucket)["Contents"])  # fmt: skip
    written = [k for k in keys if not k.startswith(("src/", "colour/", "files/_"))]
    assert written == ["files/good/ok.jpg"]  # nothing anywhere else in the bucket
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(f"{out}/_errors.csv").decode())))
    assert {r["id"] for r in rows} == {f"row-{i}" for i in range(1, len(paths))}
    assert {r["kind"] for r in rows} == {"unsafe_path"}
    storage.configure(None)

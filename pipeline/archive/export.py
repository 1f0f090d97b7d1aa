"""Export: the ok rows of a colorized archive as image files under OUT, at each input's
relative path and in its container, with the metadata carried so far.

One shard at a time (`export_shard`, a Ray task in flows/export.py). A shard is done when its
marker OUT/_export/<shard>.json is written; the marker records a hash of the shard's stats
file, so a re-run skips every shard that is exported and unchanged, and exports again one
that a later colorize run redid. Never outside OUT: a path that could escape it is refused as
an error row.

Containers: JPEG stays JPEG (the colorized JPEG is copied, not encoded again), PNG stays PNG,
TIFF becomes TIFF (Deflate-compressed, 16 bits kept) and anything else becomes PNG. Metadata:
EXIF, DPI, XMP, IPTC and the sRGB ICC profile in JPEG and PNG; DPI, XMP, IPTC and ICC in TIFF
(EXIF is not written into TIFF).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.archive import storage
from pipeline.archive.shards import STATS_DIR
from pipeline.imaging.images import encode_image, read_metadata

MARKERS_DIR = "_export"
ERRORS_CSV = "_errors.csv"
CONTAINERS = {".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".png": "png",
              ".tif": "tiff", ".tiff": "tiff"}  # fmt: skip
IMAGE_SUFFIXES = {*CONTAINERS, ".webp", ".bmp", ".gif"}
PATH_COLUMNS = ("path", "source_path")  # an explicit relative path wins over the id
NAME_COLUMNS = ("filename", "source_filename")
DRIVE = re.compile(r"^[A-Za-z]:")
TIFF_XMP, TIFF_IPTC = 700, 33723


class UnsafePath(ValueError):
    """A name that could write outside OUT."""


def safe_relative_path(name: str) -> str:
    """`name` as a relative POSIX path inside OUT, or UnsafePath saying why not."""
    if not name or "\x00" in name:
        raise UnsafePath("empty name or a NUL byte in it")
    if "\\" in name:
        raise UnsafePath("a backslash in the name (a Windows path?)")
    if name.startswith("/") or DRIVE.match(name):
        raise UnsafePath("an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePath("'..' in the path (it would leave OUT)")
    return "/".join(parts)


def row_name(row: dict[str, Any]) -> str:
    """Where a row goes: a path column; else the id when it is a file's relative path (image
    folders, `pack`); else a file-name column; else the id."""
    for column in PATH_COLUMNS:
        if row.get(column):
            return str(row[column])
    row_id = str(row["id"])
    if PurePosixPath(row_id).suffix.lower() in IMAGE_SUFFIXES:
        return row_id
    for column in NAME_COLUMNS:
        if row.get(column):
            return str(row[column])
    return row_id


def target(relative: str) -> tuple[str, str]:
    """(relative path of the exported file, container)."""
    path = PurePosixPath(relative)
    container = CONTAINERS.get(path.suffix.lower())
    if container is None:  # WebP, BMP, GIF or no suffix: PNG, lossless
        return str(path.with_name(path.name + ".png") if path.suffix == "" else
                   path.with_suffix(".png")), "png"  # fmt: skip
    return relative, container


def read_pixels(data: bytes) -> tuple[np.ndarray, int, dict[str, Any]]:
    """A colorized image (our JPEG or PNG) -> (H, W, 3) uint8 or uint16, bit depth, metadata."""
    img = Image.open(io.BytesIO(data))
    meta = read_metadata(img)
    if _png_bit_depth(data) == 16:
        import png  # pypng: Pillow reads 16-bit colour PNG as 8 bits

        width, height, rows, _ = png.Reader(bytes=data).asDirect()
        pixels = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
        return pixels.reshape(height, width, -1)[..., :3], 16, meta
    return np.asarray(img.convert("RGB")), 8, meta


def _png_bit_depth(data: bytes) -> int:
    return data[24] if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 else 8


def encode_tiff(pixels: np.ndarray, meta: dict[str, Any]) -> bytes:
    """RGB TIFF, Deflate-compressed, 8 or 16 bits as given, with DPI, XMP, IPTC and ICC."""
    import tifffile

    extratags: list[tuple[int, int, int, bytes, bool]] = []
    if meta.get("xmp"):
        extratags.append((TIFF_XMP, 1, len(meta["xmp"]), meta["xmp"], True))  # BYTE
    if meta.get("iptc"):
        extratags.append((TIFF_IPTC, 7, len(meta["iptc"]), meta["iptc"], True))  # UNDEFINED
    dpi = meta.get("dpi")
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        pixels,
        photometric="rgb",
        compression="zlib",
        # PNG keeps dots per metre: 1200 dpi comes back as 1199.9976; scans have whole dpi
        resolution=(round(float(dpi[0]), 2), round(float(dpi[1]), 2)) if dpi else None,
        resolutionunit="INCH" if dpi else None,
        iccprofile=meta.get("icc_profile"),
        extratags=extratags,
        metadata=None,
    )
    return buf.getvalue()


def convert(data: bytes, container: str, quality: int) -> bytes:
    """A colorized image -> bytes in `container`; the same container is copied untouched."""
    source_format = Image.open(io.BytesIO(data)).format
    if (container, source_format) in (("jpeg", "JPEG"), ("png", "PNG")):
        return data
    pixels, bits, meta = read_pixels(data)
    if container == "tiff":
        return encode_tiff(pixels, meta)
    scale = 65535.0 if bits == 16 else 255.0
    return encode_image(pixels.astype(np.float32) / scale, container, quality, bits, meta)


def marker_uri(out: str, shard: str) -> str:
    return storage.join(out, MARKERS_DIR, f"{shard}.json")


def export_shard(
    dest: str, shard: str, out: str, quality: int = 95, s3_endpoint_url: str | None = None
) -> dict[str, Any]:
    """Export one committed shard of DEST into OUT; returns its marker document:
    {"shard", "stats_sha1", "exported", "skipped": bool, "errors": [[id, path, kind, message]]}.
    """
    storage.configure(s3_endpoint_url)
    stats_sha1 = hashlib.sha1(
        storage.read_bytes(storage.join(dest, STATS_DIR, f"{shard}.json"))
    ).hexdigest()
    marker = marker_uri(out, shard)
    if storage.exists(marker):
        done: dict[str, Any] = json.loads(storage.read_bytes(marker))
        if done.get("stats_sha1") == stats_sha1:
            return {**done, "skipped": True}
    fs, path = storage.arrow_fs(storage.join(dest, f"{shard}.parquet"))
    exported, errors = 0, []
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        names = set(parquet.schema_arrow.names)
        wanted = ["id", "status", "error", "error_kind", "image"]
        extra = [c for c in (*PATH_COLUMNS, *NAME_COLUMNS) if c in names]
        for batch in parquet.iter_batches(batch_size=16, columns=[*wanted, *extra]):
            for row in batch.to_pylist():
                name = row_name(row)
                if row["status"] != "ok":
                    errors.append([row["id"], name, row.get("error_kind") or "error", row["error"]])
                    continue
                try:
                    relative, container = target(safe_relative_path(name))
                    data = convert(row["image"], container, quality)
                except UnsafePath as exc:
                    errors.append([row["id"], name, "unsafe_path", f"not exported: {exc}"])
                    continue
                except Exception as exc:  # one image that cannot be converted must not stop all
                    errors.append([row["id"], name, "export", f"{type(exc).__name__}: {exc}"])
                    continue
                storage.write_bytes(storage.join(out, relative), data)
                exported += 1
    document = {"shard": shard, "stats_sha1": stats_sha1, "exported": exported, "errors": errors}
    storage.write_bytes(marker, json.dumps(document, indent=1).encode())
    return {**document, "skipped": False}


def errors_csv(documents: list[dict[str, Any]]) -> bytes:
    """OUT/_errors.csv: every row not exported, with why (id, path, kind, message)."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["shard", "id", "path", "kind", "message"])
    for doc in sorted(documents, key=lambda d: d["shard"]):
        for row_id, path, kind, message in doc["errors"]:
            writer.writerow([doc["shard"], row_id, path, kind, message])
    return buf.getvalue().encode()


def check_destination(out: str, dest: str, source: str | None) -> None:
    """Fail fast: OUT must not be, or be inside, SOURCE (or DEST itself)."""

    def norm(uri: str) -> str:
        return uri.rstrip("/") if storage.is_s3(uri) else str(PurePosixPath(_abs(uri)))

    target_dir = norm(out)
    for name, root in (("SOURCE", source), ("DEST", dest)):
        if not root:
            continue
        r = norm(root)
        if target_dir == r or (name == "SOURCE" and target_dir.startswith(r + "/")):
            raise ValueError(
                f"export folder {out!r} is {'inside' if target_dir != r else 'the same as'} "
                f"{name} {root!r}: choose a folder outside it, e.g. {r}-colour"
            )


def _abs(path: str) -> str:
    from pathlib import Path

    return str(Path(path).expanduser().resolve())

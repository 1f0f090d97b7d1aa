"""Builders of real test archives: photos bundled with scikit-image plus deliberately bad files."""

from __future__ import annotations

import errno
import io
import os
import select
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from skimage import data

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def jpeg(array: np.ndarray, size: int | None = None) -> bytes:
    img = Image.fromarray(array).convert("RGB")
    if size:
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png16_gray() -> bytes:
    ramp = (data.camera().astype(np.uint16) * 257)[::4, ::4]
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    return buf.getvalue()


def make_image_folder(root: Path, *, bad: bool = True, size: int = 160) -> dict[str, bytes]:
    """A folder of real images (colour JPEG, gray PNG, 16-bit PNG) and, with `bad`, broken ones.
    Returns {relative path: bytes}."""
    files: dict[str, bytes] = {}
    for name in PHOTOS:
        files[f"colour/{name}.jpg"] = jpeg(getattr(data, name)(), size)
    gray = io.BytesIO()
    Image.fromarray(data.camera()).resize((size, size)).save(gray, "PNG")
    files["gray/camera.png"] = gray.getvalue()
    files["gray/camera16.png"] = png16_gray()
    if bad:
        whole = jpeg(data.astronaut(), size)
        files["bad/truncated.jpg"] = whole[: len(whole) // 3]
        files["bad/empty.jpg"] = b""
        files["bad/not_an_image.png"] = b"hello, I am text"
    for rel, blob in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return files


def read_output(dest: Path) -> list[dict]:
    """All rows of every output shard (without image bytes), plus a flag for image presence."""
    rows = []
    for path in sorted(dest.rglob("*.parquet")):
        if "_tmp" in path.parts:
            continue
        table = pq.read_table(path)
        for row in table.to_pylist():
            row["has_image"] = row.pop("image") is not None
            row["_shard"] = path.stem
            rows.append(row)
    return rows


def jpeg_with_empty_iptc(array: np.ndarray, size: int | None = 160) -> bytes:
    """A real photo as JPEG whose IPTC block (Photoshop APP13) holds an empty dataset beside a
    normal one: Pillow reads the empty one's value as None."""
    from pipeline.imaging.images import _photoshop_iptc_segment

    records = bytes((0x1C, 2, 120, 0, 0))  # caption, zero length
    records += bytes((0x1C, 2, 5)) + (5).to_bytes(2, "big") + b"title"
    img = Image.fromarray(array).convert("RGB")
    if size:
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, extra=_photoshop_iptc_segment(records))
    return buf.getvalue()


def png_with_junk_exif(array: np.ndarray, size: int | None = 160) -> bytes:
    """A real photo as PNG whose eXIf chunk is junk (Pillow's getexif: "not a TIFF file")."""
    img = Image.fromarray(array).convert("RGB")
    if size:
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=b"this is no TIFF header at all")
    return buf.getvalue()


class Gate:
    """A source image that is a named pipe, for tests that must act while a shard is in
    flight: the worker that reads it blocks until the test lets the bytes through. The run
    finds it through a listing frozen before the pipe replaced the file (`freeze_with_gate`).

    `wait_reader` returns once a reader has the pipe open (a non-blocking open for writing
    succeeds only then): from that moment the shard is in flight and stays so."""

    def __init__(self, path: Path, blob: bytes) -> None:
        self.path, self.blob, self.fd = path, blob, -1
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    def wait_reader(self, seconds: float = 600) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as exc:  # ENXIO: no reader yet
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def wait_reader_gone(self, seconds: float = 600) -> None:
        """Until no reader has the pipe open any more (a killed reader's process is gone: our
        end then polls as an error), so that the next reader is a new one."""
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        deadline = time.monotonic() + seconds
        while not any(events & select.POLLERR for _, events in poller.poll(100)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.path} still has a reader")
            time.sleep(0.05)

    def drop(self) -> None:
        """Close our end without writing (after the reader was killed)."""
        os.close(self.fd)
        self.fd = -1

    def release(self) -> None:
        """Write the image's bytes to the reader and close: it reads them, then EOF."""
        os.set_blocking(self.fd, True)
        view = memoryview(self.blob)
        while view:
            view = view[os.write(self.fd, view) :]
        self.drop()


def freeze_with_gate(source: Path, dest: Path, gated: str, shard_size: int = 1) -> Gate:
    """Freeze SOURCE's file listing into DEST (as a first run does), then make the file
    `gated` a Gate. Returns the gate."""
    from pipeline.archive.shards import list_shards

    list_shards(str(source), str(dest), shard_size)
    return Gate(source / gated, (source / gated).read_bytes())

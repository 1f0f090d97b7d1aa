"""Pack a folder or prefix of image files into Parquet shards, so an archive is prepared once.

Columns: id (the relative path), image (the file's bytes, untouched), filename, width and
height (from the header; null where the file is not a readable image: the colorize run will
report it as an error row, nothing is dropped here).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import pyarrow as pa
from PIL import Image

from pipeline.archive import storage
from pipeline.archive.shards import IMAGE_SUFFIXES, ShardWriter, SourceError

PACK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("filename", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)


def _header_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None, None


def pack_images(
    source: str,
    dest: str,
    shard_size: int = 256,
    threads: int = 8,
    on_shard: Callable[[str, int], None] | None = None,
) -> list[str]:
    """Write DEST/part-00000.parquet ...; returns the shard URIs. Existing shards are kept
    (a re-run resumes)."""
    if shard_size < 1:
        raise SourceError(f"--shard-size must be >= 1, got {shard_size}")
    if not storage.source_exists(source):
        raise SourceError(f"source {source!r} does not exist or is empty")
    files = [
        storage.relative(source, u)
        for u in storage.list_files(source)
        if u.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not files:
        raise SourceError(f"no image files under {source!r} ({', '.join(IMAGE_SUFFIXES)})")
    outputs = []
    with ThreadPoolExecutor(threads) as pool:
        for index, start in enumerate(range(0, len(files), shard_size)):
            uri = storage.join(dest, f"part-{index:05d}.parquet")
            outputs.append(uri)
            if storage.exists(uri):
                continue
            chunk = files[start : start + shard_size]
            blobs = list(pool.map(lambda rel: storage.read_bytes(storage.join(source, rel)), chunk))
            sizes = [_header_size(b) for b in blobs]
            table = pa.table(
                {
                    "id": chunk,
                    "image": blobs,
                    "filename": [PurePosixPath(rel).name for rel in chunk],
                    "width": [s[0] for s in sizes],
                    "height": [s[1] for s in sizes],
                },
                schema=PACK_SCHEMA,
            )
            writer = ShardWriter(uri, storage.local_staging_dir(dest))
            writer.write_table(table)
            writer.commit()
            if on_shard is not None:
                on_shard(uri, len(chunk))
    storage.clean_staging(dest)  # nothing but the shards is left in DEST
    return outputs

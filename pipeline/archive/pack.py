"""Pack a folder or prefix of image files into Parquet shards, so an archive is prepared once.

Columns: id (the relative path), image (the file's bytes, untouched), filename, width and
height (from the header; null where the file is not a readable image: the colorize run will
report it as an error row, nothing is dropped here).

DEST/_pack.json freezes what DEST is packed from before the first shard is written: SOURCE and
each shard's files. A re-run resumes at the shards not yet written, with the same boundaries
(files added to SOURCE since become new shards), and a run from another SOURCE into DEST
refuses: its shards would be skipped as "already there" and its images never packed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import pyarrow as pa
from PIL import Image

from pipeline.archive import storage
from pipeline.archive.shards import IMAGE_SUFFIXES, ShardWriter, SourceError

PACK_RECORD = "_pack.json"

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
    (a re-run resumes); DEST packed from another SOURCE is refused (module doc)."""
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
    chunks = frozen_chunks(source, dest, files, shard_size)
    outputs = []
    with ThreadPoolExecutor(threads) as pool:
        for index, chunk in enumerate(chunks):
            uri = storage.join(dest, f"part-{index:05d}.parquet")
            outputs.append(uri)
            if storage.exists(uri):
                continue
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
            try:
                writer.write_table(table)
                writer.commit()
            except BaseException:
                writer.abort()  # no temp file left behind
                raise
            if on_shard is not None:
                on_shard(uri, len(chunk))
    storage.clean_staging(dest)  # nothing but the shards is left in DEST
    return outputs


def frozen_chunks(source: str, dest: str, files: list[str], shard_size: int) -> list[list[str]]:
    """Each shard's files, as DEST/_pack.json froze them (new files appended as new shards);
    written before any shard. A DEST packed before the record existed adopts this listing."""
    record_uri = storage.join(dest, PACK_RECORD)
    here = storage.normalize(source)
    record = storage.read_json(record_uri)
    chunks: list[list[str]] = []
    if record is not None:
        if not storage.same_place(record["source"], here):
            raise SourceError(
                f"{dest} holds the shards of {record['source']}, not of this SOURCE {source}: "
                "nothing was written. Pack into a new DEST (one archive, one SOURCE)"
            )
        chunks, shard_size = record["shards"], record["shard_size"]
    known = {f for chunk in chunks for f in chunk}
    new = [f for f in files if f not in known]
    if new or record is None:
        chunks += [new[i : i + shard_size] for i in range(0, len(new), shard_size)]
        doc = {"source": here, "shard_size": shard_size, "shards": chunks}
        storage.write_bytes(record_uri, json.dumps(doc, indent=1).encode())
    return chunks

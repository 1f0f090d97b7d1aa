"""Archive shards in and out: listing, reading rows in batches, writing an output shard.

An input shard is one Parquet file, or a fixed chunk of an image-file listing. The listing of
a folder is frozen in DEST/_listing.json on the first run, so shard boundaries never move
when files are added later (new files become new shards).

A DEST that holds more than one SOURCE (`colorize --add-source`, manifest.py) gives each added
one a namespace: its shards are named `<namespace>/<name>` (DEST/<namespace>/<name>.parquet,
its listing DEST/<namespace>/_listing.json) and its rows' ids `<namespace>/<id>`, so neither
collides with another source's. The first source has none: its names are as they always were.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
LISTING = "_listing.json"
STATS_DIR = "_stats"
SAMPLES_DIR = "_samples"

# Columns we write; input metadata columns with these names are kept as "source_<name>".
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_kind", pa.string()),  # empty, not_an_image, corrupt, too_large, ... (stats.py)
        ("image", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("colorfulness", pa.float64()),
        ("psnr", pa.float64()),
        ("ssim", pa.float64()),
        ("auc", pa.float64()),
        ("auc_rebalanced", pa.float64()),
        ("uncertainty", pa.float64()),  # the network's doubt, 0-1 (models.decode.uncertainty)
        ("model", pa.string()),
        ("hints", pa.int32()),  # colour hints it was colorized with (archive/hint_record.py)
    ]
)


class SourceError(ValueError):
    """A source that cannot be processed; the message says what to fix."""


@dataclass(frozen=True)
class Shard:
    name: str  # output name: DEST/<name>.parquet, DEST/_stats/<name>.json
    kind: str  # "parquet" or "files"
    uri: str  # the Parquet file, or the root folder/prefix of the files
    files: tuple[str, ...] = ()  # relative paths under `uri`, for kind "files"
    namespace: str = ""  # its source's in DEST (module doc): prefixes `name` and every row's id

    def output_uri(self, dest: str) -> str:
        return storage.join(dest, f"{self.name}.parquet")

    def stats_uri(self, dest: str) -> str:
        return storage.join(dest, STATS_DIR, f"{self.name}.json")

    def sample_uri(self, dest: str) -> str:
        return storage.join(dest, SAMPLES_DIR, f"{self.name}.png")


def list_shards(
    source: str, dest: str, shard_size: int = 256, namespace: str = "", freeze: bool = True
) -> list[Shard]:
    """The shards of an archive: its Parquet files, else its image files in chunks; named in
    `namespace` when DEST gave its source one. `freeze` False: a new listing of files is not
    written to DEST (a request still being checked)."""
    if shard_size < 1:
        raise SourceError(f"--shard-size must be >= 1, got {shard_size}")
    if not storage.source_exists(source):
        raise SourceError(f"source {source!r} does not exist or is empty: check the path/URI")
    inside_dest = storage.normalize(dest) + "/"  # DEST's own files, where DEST is in SOURCE
    files = [
        u for u in storage.list_files(source) if not storage.normalize(u).startswith(inside_dest)
    ]
    parquet = [u for u in files if u.endswith(".parquet")]
    if parquet:
        root = source if parquet[0] != source else source.rsplit("/", 1)[0]  # a single file
        names = [storage.relative(root, u)[: -len(".parquet")] for u in parquet]
        return [
            Shard(_named(namespace, name), "parquet", uri, namespace=namespace)
            for name, uri in zip(names, parquet, strict=True)
        ]
    images = [storage.relative(source, u) for u in files if u.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise SourceError(
            f"source {source!r} has no Parquet files and no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return _file_shards(source, dest, images, shard_size, namespace, freeze)


def _named(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _file_shards(
    source: str, dest: str, images: list[str], shard_size: int, namespace: str, freeze: bool
) -> list[Shard]:
    listing_uri = storage.join(dest, _named(namespace, LISTING))
    frozen: list[dict[str, Any]] = []
    saved = storage.read_json(listing_uri)
    if saved is not None:
        _check_listing_source(listing_uri, saved["source"], source)
        frozen = saved["shards"]
        shard_size = saved["shard_size"]
    known = {f for s in frozen for f in s["files"]}
    new = [f for f in images if f not in known]
    if new or not frozen:
        for i in range(0, len(new), shard_size):
            frozen.append({"name": f"files-{len(frozen):05d}", "files": new[i : i + shard_size]})
        doc = {"source": storage.normalize(source), "shard_size": shard_size, "shards": frozen}
        if freeze:
            storage.write_bytes(listing_uri, json.dumps(doc, indent=1).encode())
    return [
        Shard(_named(namespace, s["name"]), "files", source, tuple(s["files"]), namespace)
        for s in frozen
    ]


def _check_listing_source(listing_uri: str, recorded: str, source: str) -> None:
    """A listing is one folder's: another folder's files must never join its shards."""
    if not storage.same_place(recorded, storage.normalize(source)):
        raise SourceError(
            f"{listing_uri} freezes the files of {recorded}, not of this run's SOURCE "
            f"{source}: nothing was written. Write to a new DEST, or colorize {recorded} "
            "into it first (DEST then records it) and add this one with --add-source"
        )


def is_committed(shard: Shard, dest: str) -> bool:
    return storage.exists(shard.stats_uri(dest))


@dataclass
class RowBatch:
    """A batch of input rows: ids, a way to get each image's bytes, and metadata columns."""

    ids: list[str]
    loaders: list[Callable[[], bytes | None]]
    metadata: pa.Table  # the input's other columns, same row order (may have no columns)


@dataclass
class ColumnNames:
    image: str = "image"
    id: str = "id"


def image_bytes_column(column: pa.ChunkedArray | pa.Array) -> list[bytes | None]:
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise SourceError("image struct column has no 'bytes' field")
        column = pc.struct_field(column, "bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise SourceError(
            f"image column must be binary or a {{bytes, path}} struct, got {column.type}"
        )
    return column.to_pylist()


def parquet_schema(uri: str) -> pa.Schema:
    fs, path = storage.arrow_fs(uri)
    return pq.read_schema(path, filesystem=fs)


def check_columns(shard: Shard, columns: ColumnNames) -> None:
    """Fail fast on a wrong --image-column before any work."""
    if shard.kind != "parquet":
        return
    schema = parquet_schema(shard.uri)
    if columns.image not in schema.names:
        raise SourceError(
            f"{shard.uri} has no image column {columns.image!r} (columns: "
            f"{', '.join(schema.names)}): pass --image-column"
        )
    kind = schema.field(columns.image).type
    ok = pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_struct(kind)
    if not ok:
        raise SourceError(f"image column {columns.image!r} has type {kind}: expected binary")


def read_batches(shard: Shard, columns: ColumnNames, batch_rows: int) -> Iterator[RowBatch]:
    if shard.kind == "files":
        for i in range(0, len(shard.files), batch_rows):
            rel = shard.files[i : i + batch_rows]
            uris = [storage.join(shard.uri, f) for f in rel]
            loaders = [_file_loader(u) for u in uris]
            ids = [_named(shard.namespace, f) for f in rel]
            yield RowBatch(ids, loaders, _no_columns(len(rel)))
        return
    fs, path = storage.arrow_fs(shard.uri)
    pfile = pq.ParquetFile(path, filesystem=fs)
    row = 0
    for batch in pfile.iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        images = image_bytes_column(table.column(columns.image))
        if columns.id in table.column_names:
            ids = [_named(shard.namespace, str(v)) for v in table.column(columns.id).to_pylist()]
            meta = table.drop_columns([columns.image, columns.id])
        else:  # the shard's name holds its namespace already
            ids = [f"{shard.name}:{row + i}" for i in range(table.num_rows)]
            meta = table.drop_columns([columns.image])
        row += table.num_rows
        yield RowBatch(ids, [_const(b) for b in images], meta)


def shard_ids(shard: Shard, columns: ColumnNames) -> list[str]:
    """The row ids a shard's output will have, as `read_batches` names them (reads only the id
    column of a Parquet shard)."""
    if shard.kind == "files":
        return [_named(shard.namespace, f) for f in shard.files]
    fs, path = storage.arrow_fs(shard.uri)
    pfile = pq.ParquetFile(path, filesystem=fs)
    if columns.id in pfile.schema_arrow.names:
        values = pfile.read(columns=[columns.id]).column(columns.id).to_pylist()
        return [_named(shard.namespace, str(v)) for v in values]
    return [f"{shard.name}:{i}" for i in range(pfile.metadata.num_rows)]


def _no_columns(n: int) -> pa.Table:
    return pa.table({"_": pa.nulls(n)}).drop_columns(["_"])


def _const(data: bytes | None) -> Callable[[], bytes | None]:
    return lambda: data


def _file_loader(uri: str) -> Callable[[], bytes | None]:
    return lambda: storage.read_bytes(uri)


@dataclass
class ShardWriter:
    """Streams output rows into a Parquet file at a temporary local name; `commit` moves it to
    its final URI in one step, so a partial shard is never visible under the final name."""

    uri: str
    staging_dir: str
    _writer: pq.ParquetWriter | None = None
    _path: str = field(default="")
    schema: pa.Schema | None = None

    def __post_init__(self) -> None:
        name = Path(self.uri).name
        self._path = os.path.join(self.staging_dir, f".{name}.{uuid.uuid4().hex}.tmp")

    def write(self, ours: dict[str, list[Any]], metadata: pa.Table) -> None:
        """Our columns, then the input's metadata columns unchanged (renamed on a clash)."""
        table = pa.table(ours, schema=OUTPUT_SCHEMA)
        for name in metadata.column_names:
            out_name = f"source_{name}" if name in OUTPUT_SCHEMA.names else name
            table = table.append_column(out_name, metadata.column(name))
        self.write_table(table)

    def write_table(self, table: pa.Table) -> None:
        if self._writer is None:
            self.schema = table.schema
            # encoded images neither compress nor repeat: zstd, dictionaries and min/max
            # statistics only cost time on them (they took ~1 ms per 1024-px JPEG)
            rest = [name for name in table.column_names if name != "image"]
            codecs = {name: "zstd" if name in rest else "none" for name in table.column_names}
            self._writer = pq.ParquetWriter(
                self._path,
                table.schema,
                compression=codecs,
                use_dictionary=rest,
                write_statistics=rest,
            )
        self._writer.write_table(table.cast(self.schema))

    def commit(self) -> None:
        if self._writer is None:  # an empty shard still yields a (valid, empty) output file
            pq.write_table((self.schema or OUTPUT_SCHEMA).empty_table(), self._path)
        else:
            self._writer.close()
        storage.put_file(self._path, self.uri)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        Path(self._path).unlink(missing_ok=True)

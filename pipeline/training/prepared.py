"""Prepare once, keep it: the training corpus as prepared squares in committed Parquet shards.

Each source shard becomes, in one Ray task, `train/shard-NNNNN.parquet` and
`val/shard-NNNNN.parquet` (columns id, image: the photo's `prepared` centre square as a
lossless PNG), written in row groups of `ROWS_PER_GROUP` (32) photos (a *block*: the unit an epoch
permutes), then its commit marker `_done/shard-NNNNN.json` (rows per block of each split,
photos skipped as gray or unreadable, and the ab bin counts of its training photos: the
prior's statistic). A shard whose marker exists is never prepared again, so an interrupted
preparation resumes where it stopped.

Everything sits under `BASE/<digest>/`, the digest a hash of the preparation settings (each
source shard's name, size and modification time; the prepared size; the split's
val_fraction and fold; the id and image columns): a second run on the same corpus with the same
settings finds the shards committed and decodes no photo; a change of any of them prepares
afresh beside the old folder. BASE is OUT/prepared, or a location (local or s3://) that
several runs share.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from models.bins import gamut_bin_centers
from models.targets import bin_histogram
from pipeline.archive import storage
from pipeline.archive.shards import ShardWriter, image_bytes_column
from pipeline.imaging.color import rgb_to_lab
from pipeline.imaging.images import decode_image

FORMAT_VERSION = 1
ROWS_PER_GROUP = 32  # photos per block (Parquet row group): what an epoch permutes
SPLITS = ("train", "val")
SETTINGS = "settings.json"
DONE = "_done"
SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary())])


@dataclass(frozen=True)
class PrepareSettings:
    prepared: int
    val_fraction: float
    fold: int
    id_column: str = "id"
    image_column: str = "image"
    rows_per_group: int = ROWS_PER_GROUP
    holdout: str = ""


@dataclass(frozen=True)
class Block:
    """One row group of one prepared shard of a split."""

    uri: str
    group: int
    rows: int


@dataclass
class Prepared:
    """A committed preparation: where it is, its blocks, the prior's counts, what this call did."""

    root: str
    digest: str
    blocks: dict[str, list[Block]]
    counts: torch.Tensor
    images: dict[str, int]
    skipped: dict[str, int]
    shards: int
    prepared_now: int  # shards this call prepared (0: everything was reused)
    markers: list[dict[str, Any]] = field(default_factory=list)


def split_of(row_id: str, val_fraction: float, fold: int = 0, holdout: str = "") -> str:
    """The split of a row, from a hash of its id: stable across runs, machines and shardings.

    Fold f holds out the ids hashed into [f * val_fraction, (f + 1) * val_fraction): with
    val_fraction 1/k, folds 0..k-1 partition the corpus (k-fold cross-validation). With
    `holdout`, the ids under that top folder (or under any of several, comma-separated) are
    held out instead (a packed folder's ids are paths): photos from sources the model never
    saw, as an archive's own photos are."""
    if holdout:
        return "val" if top_folder(row_id) in holdout.split(",") else "train"
    h = int.from_bytes(hashlib.sha1(row_id.encode()).digest()[:8], "big") / 2.0**64
    return "val" if fold * val_fraction <= h < (fold + 1) * val_fraction else "train"


def top_folder(row_id: str) -> str:
    """The first folder of an id that is a relative path ("" for a bare name)."""
    head, sep, _ = row_id.partition("/")
    return head if sep else ""


def source_folders(archive: str, id_column: str = "id") -> list[str]:
    """The top folders of an archive's ids, sorted: the folds of a leave-one-source-out run."""
    return sorted(source_sizes(archive, id_column))


def source_sizes(archive: str, id_column: str = "id") -> dict[str, int]:
    """{top folder: its ids} of an archive, by folder name."""
    folders: Counter[str] = Counter()
    for uri in storage.list_files(archive):
        if uri.endswith(".parquet"):
            fs, path = storage.arrow_fs(uri)
            ids = pq.read_table(path, columns=[id_column], filesystem=fs).column(id_column)
            folders.update(top_folder(str(i)) for i in ids.to_pylist())
    return dict(sorted(folders.items()))


def prepare_photo_why(data: bytes, size: int) -> tuple[np.ndarray | None, str]:
    """Encoded photo -> ((size, size, 3) uint8: short side resized, centre square, "ok"), or
    (None, "gray" | "unreadable"): no colour to learn from."""
    try:
        decoded = decode_image(data)
    except Exception:  # one unreadable photo is skipped, never the whole preparation task
        return None, "unreadable"
    if decoded.rgb is None:
        return None, "gray"
    img = Image.fromarray(np.round(decoded.rgb * 255).astype(np.uint8))
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size))), "ok"


def encode_square(square: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(square).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def decode_square(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def ab_targets(rgb_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, S, 3) uint8 -> L (N, 1, S, S) and ab at the output resolution (N, 2, S/4, S/4)."""
    lab = rgb_to_lab(rgb_uint8.permute(0, 3, 1, 2).float() / 255.0)
    return lab[:, :1], torch.nn.functional.avg_pool2d(lab[:, 1:], 4)


# -- settings and where they live -----------------------------------------------------------
def source_identity(archive: str, uris: list[str]) -> list[dict[str, Any]]:
    """Each source shard's name (relative to the archive), size and modification time."""
    out = []
    for uri in uris:
        fs, path = storage.arrow_fs(uri)
        info = fs.get_file_info(path)
        mtime = info.mtime_ns if info.mtime_ns is not None else None
        name = storage.relative(archive, uri) if uri != archive else uri.rsplit("/", 1)[-1]
        out.append({"name": name, "size": info.size, "mtime_ns": mtime})
    return out


def settings_document(archive: str, uris: list[str], settings: PrepareSettings) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "encoding": "png",
        "rows_per_group": settings.rows_per_group,
        "prepared": settings.prepared,
        "val_fraction": settings.val_fraction,
        "fold": settings.fold,
        "holdout": settings.holdout,
        "id_column": settings.id_column,
        "image_column": settings.image_column,
        "sources": source_identity(archive, uris),
    }


def settings_digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def marker_uri(root: str, name: str) -> str:
    return storage.join(root, DONE, f"{name}.json")


def split_uri(root: str, split: str, name: str) -> str:
    return storage.join(root, split, f"{name}.parquet")


# -- one source shard -> its prepared shards (a Ray task) ------------------------------------
def prepare_shard(
    source_uri: str,
    root: str,
    name: str,
    settings: PrepareSettings,
    s3_endpoint_url: str | None = None,
    read_rows: int = 16,
) -> dict[str, Any]:
    """Prepare one source shard: its two split files, then its marker (the commit)."""
    storage.configure(s3_endpoint_url)
    centers = gamut_bin_centers()
    counts = torch.zeros(centers.shape[0], dtype=torch.float64)
    staging = storage.local_staging_dir(root)
    writers = {s: ShardWriter(split_uri(root, s, name), staging, schema=SCHEMA) for s in SPLITS}
    pending: dict[str, dict[str, list[Any]]] = {s: {"id": [], "image": []} for s in SPLITS}
    groups: dict[str, list[int]] = {s: [] for s in SPLITS}
    skipped = {"gray": 0, "unreadable": 0}

    def flush(split: str) -> None:
        rows = pending[split]
        if rows["id"]:
            writers[split].write_table(pa.table(rows, schema=SCHEMA))
            groups[split].append(len(rows["id"]))
            pending[split] = {"id": [], "image": []}

    fs, path = storage.arrow_fs(source_uri)
    try:
        pfile = pq.ParquetFile(path, filesystem=fs)
        columns = [settings.id_column, settings.image_column]
        for batch in pfile.iter_batches(batch_size=read_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            ids = [str(v) for v in table.column(settings.id_column).to_pylist()]
            blobs = image_bytes_column(table.column(settings.image_column))
            for row_id, blob in zip(ids, blobs, strict=True):
                if not blob:
                    skipped["unreadable"] += 1
                    continue
                square, why = prepare_photo_why(blob, settings.prepared)
                if square is None:
                    skipped[why] += 1
                    continue
                split = split_of(row_id, settings.val_fraction, settings.fold, settings.holdout)
                if split == "train":
                    _, ab = ab_targets(torch.from_numpy(np.array(square[None])))
                    counts += bin_histogram(ab, centers)
                pending[split]["id"].append(row_id)
                pending[split]["image"].append(encode_square(square))
                if len(pending[split]["id"]) == settings.rows_per_group:
                    flush(split)
        for split in SPLITS:
            flush(split)
            writers[split].commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    marker = {
        "name": name,
        "source": source_uri,
        "groups": groups,
        "skipped": skipped,
        "counts": counts.tolist(),
    }
    storage.write_bytes(marker_uri(root, name), json.dumps(marker).encode())
    return marker


# -- the whole corpus -----------------------------------------------------------------------
def prepare(
    archive: str,
    uris: list[str],
    base: str,
    settings: PrepareSettings,
    s3_endpoint_url: str | None = None,
    max_in_flight: int | None = None,
) -> Prepared:
    """Prepare every source shard not yet committed under BASE/<digest> (Ray tasks, a bounded
    number in flight); returns the whole committed preparation."""
    import ray

    uris = sorted(uris)
    document = settings_document(archive, uris, settings)
    digest = settings_digest(document)
    root = storage.join(base, digest)
    if not storage.exists(storage.join(root, SETTINGS)):
        storage.write_bytes(storage.join(root, SETTINGS), json.dumps(document, indent=1).encode())
    names = [shard_name(i) for i in range(len(uris))]
    done = {
        u.rsplit("/", 1)[-1][: -len(".json")]
        for u in storage.list_files(storage.join(root, DONE))
        if u.endswith(".json")
    }
    todo = [(uri, name) for uri, name in zip(uris, names, strict=True) if name not in done]
    if todo:
        task = ray.remote(num_cpus=1)(prepare_shard)
        limit = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
        running: list[Any] = []
        for uri, name in todo:
            if len(running) >= limit:
                ready, running = ray.wait(running, num_returns=1)
                ray.get(ready)
            running.append(task.remote(uri, root, name, settings, s3_endpoint_url))
        ray.get(running)
        storage.clean_staging(root)
    return load(root, names, digest, prepared_now=len(todo))


def load(root: str, names: list[str], digest: str, prepared_now: int = 0) -> Prepared:
    """The committed preparation under `root`: blocks per split, merged counts."""
    centers = gamut_bin_centers()
    counts = torch.zeros(centers.shape[0], dtype=torch.float64)
    blocks: dict[str, list[Block]] = {s: [] for s in SPLITS}
    images = {s: 0 for s in SPLITS}
    skipped = {"gray": 0, "unreadable": 0}
    markers = []
    for name in names:
        marker = json.loads(storage.read_bytes(marker_uri(root, name)))
        markers.append(marker)
        counts += torch.tensor(marker["counts"], dtype=torch.float64)
        for kind, n in marker["skipped"].items():
            skipped[kind] = skipped.get(kind, 0) + n
        for split in SPLITS:
            rows = marker["groups"][split]
            images[split] += sum(rows)
            uri = split_uri(root, split, name)
            blocks[split] += [Block(uri, g, n) for g, n in enumerate(rows)]
    return Prepared(root, digest, blocks, counts, images, skipped, len(names), prepared_now,
                    markers)  # fmt: skip


def read_block(block: Block, files: dict[str, pq.ParquetFile] | None = None) -> pa.Table:
    """One block's rows (id, image); `files` caches the open Parquet files of a reader."""
    cache = files if files is not None else {}
    pfile = cache.get(block.uri)
    if pfile is None:
        fs, path = storage.arrow_fs(block.uri)
        pfile = pq.ParquetFile(path, filesystem=fs)
        if files is not None:
            files.clear()  # one open file per reader: its footer is all it keeps
            files[block.uri] = pfile
    return pfile.read_row_group(block.group)

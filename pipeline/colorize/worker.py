"""`ShardColorizer`: loads a model once and turns whole input shards into output shards.

Like Ray's batch-inference examples, a callable class: `__init__` loads the model onto its
device, `process(shard, dest)` maps a shard and returns its statistics (never pixels).
Only the network runs batched on the calling thread; everything per image runs in a thread
pool, overlapped with it: while the model works on batch i, threads decode batch i + 1 and
finish (upsample ab, Lab -> RGB), score, encode and make the gallery images of batch i - 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

import models
from models.hints import Hint
from pipeline.archive import hint_record, manifest, storage
from pipeline.archive.shards import (
    OUTPUT_SCHEMA,
    ColumnNames,
    RowBatch,
    Shard,
    ShardWriter,
    read_batches,
)
from pipeline.archive.stats import ShardStats
from pipeline.colorize.hints import batch_planes, parse_points
from pipeline.colorize.int8 import Int8Forward
from pipeline.colorize.precision import CHOICES as PRECISION_CHOICES
from pipeline.colorize.precision import resolve_precision
from pipeline.colorize.predict import (
    finish,
    predict_low,
    predict_working,
    working_batch,
)
from pipeline.colorize.previews import (
    gray_and_colour,
    previews,
    sample_pair,
    sample_strip,
    write_previews,
)
from pipeline.imaging.images import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    ImageError,
    decode_image,
    encode_image,
    rgb_to_pil,
)
from pipeline.imaging.metrics import image_metrics

# Set in each worker process before torch loads (Ray's runtime_env): idle OpenMP threads sleep
# rather than spin. The per-image work runs in our own threads beside torch's; spinning ones
# took a quarter of a gray scan's CPU time and slowed the others (docs/benchmarks.md); the
# forward itself measured the same either way. And all threads allocate from glibc's main
# heap (see `keep_freed_memory`), including those started before our code runs.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "MALLOC_ARENA_MAX": "1"}


@dataclass(frozen=True)
class ColorizeOptions:
    temperature: float | None = None  # None: the model's own (0.38 for ours)
    batch_size: int = 8
    image_column: str = "image"
    id_column: str = "id"
    output_format: str = "jpeg"  # or "png"; 16-bit inputs always give 16-bit PNG
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    samples_per_shard: int = 2  # gray|colour pairs kept for the contact sheet
    metrics_max_side: int = 512  # score a copy at most this large (0: full resolution)
    # bf16 (CUDA, a CPU with native bf16), fp16 (CUDA), int8 (CPU), auto (each worker's best)
    precision: str = "fp32"

    def validate(self) -> None:
        """Fail fast with a message that says how to fix the option."""
        if self.temperature is not None and not 0 < self.temperature <= 10:
            raise ValueError(f"--temperature must be in (0, 10], got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.output_format not in ("jpeg", "png"):
            raise ValueError(f"--format must be 'jpeg' or 'png', got {self.output_format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")
        if self.metrics_max_side < 0:
            raise ValueError(f"--metrics-max-side must be >= 0, got {self.metrics_max_side}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if self.precision not in PRECISION_CHOICES:
            choices = ", ".join(PRECISION_CHOICES)
            raise ValueError(f"--precision must be one of {choices}, got {self.precision!r}")


def keep_freed_memory() -> None:
    """glibc's malloc: every block from one heap, and freed memory kept there for reuse (up to
    1 GB free at its top). By default, blocks over 32 MB (a 16-bit scan's arrays) and, at
    first, over 128 kB (a 1024-px image's 4 MB arrays) were mapped afresh for every image, and
    each thread's own heap (64 MB at most) was unmapped whenever it emptied: the kernel then
    zero-filled all of that memory again for the next image (5-20% of an image's CPU time,
    docs/benchmarks.md). The one-heap setting binds the threads started from here on;
    WORKER_ENV's MALLOC_ARENA_MAX binds a worker process's from its start. Elsewhere than
    glibc, nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_arena_max, 1)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def node_label() -> str:
    """ "<ip> <node id prefix>" of the Ray node this runs on ("local" outside Ray)."""
    import ray

    if not ray.is_initialized():
        return "local"
    context = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()} {context.get_node_id()[:8]}"


def model_id(path: str) -> str:
    """`<file name>@<first 12 hex of its sha256>`: which weights made a row."""
    return f"{os.path.basename(path)}@{models.file_sha256(path)[:12]}"


@contextlib.contextmanager
def resolve_model(model: str) -> Iterator[str]:
    """A local checkpoint path for "default", a path, or an s3:// URI, while the block runs
    (an S3 model's copy is removed after it: load it inside)."""
    with storage.local_copy(str(models.DEFAULT_MODEL) if model == "default" else model) as path:
        yield path


@dataclass
class _Item:
    """One row on its way through the shard."""

    id: str
    position: int  # in the shard, input order: names the row's gallery images
    decoded: Decoded | None = None
    error: tuple[str, str] | None = None  # (kind, message)
    ab_low: torch.Tensor | None = None  # the network's ab (2, h, w), on the model's device
    working: torch.Tensor | None = None  # the network's input L (s, s): the thumbnails' L
    output: Image.Image | np.ndarray | None = None  # the RGB output: 8-bit image, 16-bit array
    source: bytes | None = None  # the input's bytes, where a browser shows them as they are
    uncertainty: float | None = None  # the network's, from the same forward (models.decode)
    hints: list[Hint] = field(default_factory=list)  # the colour hints in effect for its id


@dataclass
class _Encoded:
    image: bytes | None
    metrics: dict[str, float]
    error: tuple[str, str] | None  # (kind, message)
    dropped: list[str] = field(default_factory=list)  # metadata kinds damaged and left out


class ShardColorizer:
    def __init__(
        self,
        model: str = "default",
        options: ColorizeOptions | None = None,
        *,
        device: str | None = None,
        threads: int | None = None,
        s3_endpoint_url: str | None = None,
    ) -> None:
        storage.configure(s3_endpoint_url)
        keep_freed_memory()
        self.options = options or ColorizeOptions()
        self.options.validate()
        self.device = torch.device(device) if device else pick_device()
        self.threads = threads or os.cpu_count() or 1
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        with resolve_model(model) as path:
            self.model = models.load(path, device=self.device)
            self.model_id = model_id(path)
            # the number type this worker runs (`auto`: the fastest for its hardware), and in
            # int8 the model's int8 twin, compiled once for the actor's life
            self.precision = resolve_precision(self.options.precision, self.device, path)
            self.int8 = Int8Forward(path, self.model) if self.precision == "int8" else None
        # what each shard's stats record: the manifest's hash of the settings used here
        self.settings = manifest.output_settings(
            self.model_id,
            self.model.temperature
            if self.options.temperature is None
            else self.options.temperature,
            self.options.output_format,
            self.options.quality,
            self.options.precision,
            self.options.metrics_max_side,
        )
        self.settings_hash = manifest.settings_hash(self.settings)
        # one forward before any shard: a model that cannot run on this device fails here, not
        # as a shard of error rows, and one-time kernel set-up stays out of shard timings
        warm = [np.full((64, 64), 50.0, dtype=np.float32)]
        low = predict_low(self.model, warm, None, self.precision, int8=self.int8)[0]
        finish(warm[0], low[0], np.uint8)
        self.centers, self.prior = self.model.centers.cpu(), self.model.prior.cpu()  # for metrics
        self.columns = ColumnNames(self.options.image_column, self.options.id_column)
        self.pool = ThreadPoolExecutor(max(2, self.threads), thread_name_prefix="codec")
        self.writer_thread = ThreadPoolExecutor(1, thread_name_prefix="writer")
        self.node = node_label()
        # what is loaded by now (modules, the model) lives as long as the worker: frozen, the
        # cyclic collector stops walking it on every collection (it was ~9% of a gray scan's
        # CPU time, docs/benchmarks.md)
        gc.freeze()

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.device), "model": self.model_id,
                "node": self.node, "precision": self.precision}  # fmt: skip

    def process(self, shard: Shard, dest: str, attempt: int = 1) -> dict[str, Any]:
        """Colorize one shard into DEST/<name>.parquet and commit DEST/_stats/<name>.json."""
        started = time.perf_counter()
        stats = ShardStats(shard.name, shard.uri, shard.output_uri(dest), model=self.model_id)
        stats.attempt = attempt
        stats.settings = self.settings_hash
        # replacing a committed shard (a recolorize): its gallery images are swapped atomically,
        # as the shard's old output stays whole until the new one commits
        replacing = storage.exists(shard.stats_uri(dest))
        # the colour hints in effect in DEST (archive/hint_record.py): its ids' are applied
        in_effect = hint_record.read(dest)
        seen: list[str] = []
        stats.node, stats.device, stats.precision = self.node, str(self.device), self.precision
        writer = ShardWriter(shard.output_uri(dest), storage.local_staging_dir(dest))
        samples: list[Image.Image] = []
        try:
            batches = read_batches(shard, self.columns, self.options.batch_size)
            pending_write: Future[None] | None = None
            decoding = self._submit_decode(next(batches, None), 0)
            while decoding is not None:
                batch, decode_futures = decoding
                items = [f.result() for f in decode_futures]
                for it in items:
                    seen.append(it.id)
                    if it.id in in_effect:
                        it.hints = parse_points(it.id, in_effect[it.id])
                next_position = items[-1].position + 1
                decoding = self._submit_decode(next(batches, None), next_position)  # overlaps
                self._infer(items)
                encoded = [
                    self.pool.submit(self._encode, it, dest, shard.name, replacing) for it in items
                ]
                if pending_write is not None:
                    pending_write.result()  # at most one batch waits to be written
                pending_write = self.writer_thread.submit(
                    self._write, batch, items, encoded, writer, stats, samples
                )
            if pending_write is not None:
                pending_write.result()
            # made with DEST's settings and its ids' hints: what the flow checks to skip it
            shard_hints = hint_record.of_ids(in_effect, seen)
            stats.settings = hint_record.shard_settings_hash(
                self.settings, self.settings_hash, shard_hints
            )
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        if samples:
            stats.sample = shard.sample_uri(dest)
            storage.write_bytes(stats.sample, sample_strip(samples))
        stats.seconds = time.perf_counter() - started
        stats.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        document = stats.to_json()
        storage.write_bytes(shard.stats_uri(dest), json.dumps(document, indent=1).encode())
        return document

    # -- stages ---------------------------------------------------------------------------
    def _submit_decode(
        self, batch: RowBatch | None, start: int
    ) -> tuple[RowBatch, list[Future[_Item]]] | None:
        if batch is None:
            return None
        futures = [
            self.pool.submit(self._decode, row_id, start + i, load)
            for i, (row_id, load) in enumerate(zip(batch.ids, batch.loaders, strict=True))
        ]
        return batch, futures

    def _decode(self, row_id: str, position: int, load: Any) -> _Item:
        item = _Item(row_id, position)
        try:
            data = load()
            if data is None:
                raise ImageError("missing", "no image bytes in this row (null)")
            item.decoded = decode_image(data, self.options.max_pixels)
            if item.decoded.plain_gray_jpeg:
                item.source = data  # the gallery shows it as the input's view
        except ImageError as exc:
            item.error = (exc.kind, str(exc))
        except Exception as exc:  # a read failure of one file must not sink the shard
            item.error = ("read", f"{type(exc).__name__}: {exc}")
        return item

    def _infer(self, items: list[_Item]) -> None:
        """The batched network step; upsampling and Lab -> RGB follow per image in the pool."""
        ready = [it for it in items if it.decoded is not None]
        if not ready:
            return
        try:
            lightness = [it.decoded.lightness for it in ready]  # type: ignore[union-attr]
            batch = working_batch(lightness, self.model.working_size, self.model.device)
            grid = self.model.working_size // 4  # the network's output grid
            planes = batch_planes([it.hints for it in ready], grid, grid, self.model.device)
            ab_low, uncertainty = predict_working(
                self.model,
                batch,
                self.options.temperature,
                self.precision,
                planes,
                self.int8,
            )
        except Exception:
            if len(ready) == 1:
                raise
            for it in ready:  # one bad image (e.g. out of memory) must not fail its neighbours
                self._infer_one(it)
            return
        for it, ab, small, u in zip(ready, ab_low, batch[:, 0], uncertainty.tolist(), strict=True):
            it.ab_low, it.working, it.uncertainty = ab, small, u

    def _infer_one(self, item: _Item) -> None:
        try:
            self._infer([item])
        except Exception as exc:
            item.decoded = None
            item.error = ("inference", f"{type(exc).__name__}: {exc}")

    def _write(
        self,
        batch: RowBatch,
        items: list[_Item],
        encoded: list[Future[_Encoded]],
        writer: ShardWriter,
        stats: ShardStats,
        samples: list[Image.Image],
    ) -> None:
        """One row group per batch, in input order (runs on the single writer thread; each
        row's gallery images were written by its `_encode`, all before the stats file commits
        the shard)."""
        cols: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
        for item, future in zip(items, encoded, strict=True):
            done = future.result()
            image, metrics, error = done.image, done.metrics, done.error
            size = item.decoded.size if item.decoded is not None else (None, None)
            cols["id"].append(item.id)
            cols["status"].append("ok" if error is None else "error")
            cols["error"].append(None if error is None else error[1])
            cols["error_kind"].append(None if error is None else error[0])
            cols["image"].append(image)
            cols["width"].append(size[0])
            cols["height"].append(size[1])
            for name in ("colorfulness", "psnr", "ssim", "auc", "auc_rebalanced", "uncertainty"):
                cols[name].append(metrics.get(name))
            cols["model"].append(self.model_id)
            cols["hints"].append(len(item.hints))
            if error is None:
                stats.add_ok(metrics, done.dropped)
                stats.hinted += bool(item.hints)
                if len(samples) < self.options.samples_per_shard and item.output is not None:
                    lightness = item.decoded.lightness  # type: ignore[union-attr]
                    samples.append(sample_pair(*gray_and_colour(lightness, item.output)))
            else:
                stats.add_error(error[0])
        writer.write(cols, batch.metadata)

    def _encode(self, item: _Item, dest: str, shard_name: str, atomic: bool = False) -> _Encoded:
        """Finish one image (full-size ab, RGB), score it, encode it, and make and write its
        gallery images (runs in the pool). One 8-bit (or 16-bit) RGB serves all of them."""
        if item.error is not None or item.decoded is None or item.ab_low is None:
            return _Encoded(None, {}, item.error or ("inference", "no result"))
        dec = item.decoded
        dtype = np.uint16 if dec.bit_depth == 16 else np.uint8
        try:
            rgb, ab, colourfulness = finish(
                dec.lightness, item.ab_low, dtype, keep_ab=dec.ab is not None
            )
            # the network's ab and input L are a thumbnail's worth of pixels: they make both
            ab_low, working = item.ab_low.cpu().numpy(), item.working.cpu().numpy()  # type: ignore[union-attr]
        except Exception as exc:  # e.g. out of memory on a huge scan
            return _Encoded(None, {}, ("inference", f"{type(exc).__name__}: {exc}"))
        finally:
            item.ab_low = item.working = None
        try:
            metrics = image_metrics(
                rgb, ab, dec.rgb, dec.ab, self.centers, self.prior,
                self.options.metrics_max_side, colourfulness,
            )  # fmt: skip
            if item.uncertainty is not None:
                metrics["uncertainty"] = item.uncertainty
            # 8 bits: one PIL image over join_lab's memory for the file, previews and samples
            item.output = rgb if dec.bit_depth == 16 else rgb_to_pil(rgb)
            fmt = "png" if dec.bit_depth == 16 else self.options.output_format
            dropped = list(dec.dropped)  # damaged metadata: left out when read or written
            data = encode_image(
                item.output, fmt, self.options.quality, dec.bit_depth, dec.metadata, dropped
            )
            gallery = previews(
                dec.lightness,
                item.output,
                ab_low,
                working,
                data if fmt == "jpeg" else None,
                item.source,
            )
        except Exception as exc:
            return _Encoded(None, {}, ("encode", f"{type(exc).__name__}: {exc}"))
        # outside the try: a storage fault fails the shard (which is retried), never the row
        write_previews(dest, shard_name, item.position, gallery, atomic=atomic)
        return _Encoded(data, metrics, None, dropped)

"""The prepared shards streamed to one training worker, at a position a checkpoint can hold.

Epoch e is a permutation of all blocks (row groups of the prepared shards,
`pipeline.training.prepared`) seeded by (seed, e), the same on every rank; rank r takes every
world-th block of it. A rank
reads its blocks `shuffle_blocks` at a time (a window: the bounded shuffle buffer) and yields
the window's photos in an order seeded by (seed, e, r, window). The data position (epoch,
window, offset in the window) says everything needed to go on: a resumed worker re-reads that
window, shuffles it the same way and skips `offset` photos. Each photo's random crop, flip and
pasted stamp come from a generator seeded by its position, so a resumed run draws exactly the
crops of the uninterrupted one.

A `film` share of the inputs is a random film's gray instead of Lab's L, and a `degrade` share
(of all of them) is then damaged as an old print, each seeded by (seed, step, rank).

`Loader` runs decoding, cropping, the Lab conversion and the targets in a background thread
(optionally a pool of them), a bounded number of batches ahead of the step. A worker holds
one window and a few batches: its memory does not depend on the corpus size.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from models.hints import simulated_planes
from pipeline.imaging.degrade import (
    degrade_lightness,
    film_lightness,
    random_film,
    random_old_print,
)
from pipeline.training.config import TrainConfig
from pipeline.training.prepared import Block, ab_targets, decode_square, read_block
from pipeline.training.stamps import paste_stamp


@dataclass(frozen=True)
class Position:
    """Where a rank's stream stands: the next photo is `offset` in `window` of `epoch`."""

    epoch: int = 0
    window: int = 0
    offset: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "window": self.window, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Position:
        return cls(int(d["epoch"]), int(d["window"]), int(d["offset"]))


@dataclass(frozen=True)
class Sample:
    image: bytes  # the prepared square, PNG
    key: tuple[int, ...]  # (epoch, rank, window, offset): seeds this photo's crop
    after: Position  # the stream's position once this photo is taken


def epoch_order(blocks: int, world: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s permutation of the block indices, the same on every rank; repeated
    when there are fewer blocks than ranks, so every rank gets one."""
    reps = max(1, math.ceil(world / blocks))
    return np.random.default_rng([seed, 5, epoch]).permutation(blocks * reps) % blocks


def rank_windows(
    blocks: int, world: int, rank: int, seed: int, epoch: int, window_blocks: int
) -> list[np.ndarray]:
    mine = epoch_order(blocks, world, seed, epoch)[rank::world]
    return [mine[i : i + window_blocks] for i in range(0, len(mine), window_blocks)]


def samples(
    blocks: list[Block], seed: int, rank: int, world: int, window_blocks: int, start: Position
) -> Iterator[Sample]:
    """This rank's endless stream of prepared photos from `start` on (epoch after epoch)."""
    if not blocks:
        raise ValueError("no prepared photos to train on")
    files: dict[str, pq.ParquetFile] = {}
    epoch, window, offset = start.epoch, start.window, start.offset
    while True:
        windows = rank_windows(len(blocks), world, rank, seed, epoch, window_blocks)
        while window < len(windows):
            images: list[bytes] = []
            for b in windows[window]:
                images += read_block(blocks[int(b)], files).column("image").to_pylist()
            order = np.random.default_rng([seed, 6, epoch, rank, window]).permutation(len(images))
            for k in range(offset, len(images)):
                after = (
                    Position(epoch, window, k + 1)
                    if k + 1 < len(images)
                    else Position(epoch, window + 1, 0)
                )
                yield Sample(images[order[k]], (epoch, rank, window, k), after)
            window, offset = window + 1, 0
        epoch, window = epoch + 1, 0


def random_crop(photo: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a prepared square, flipped half the time. With `scale_min` < 1, a
    random resized crop: area fraction in [scale_min, 1], aspect ratio in [3/4, 4/3], resized
    to `crop` (objects at several scales; inference squashes whole photos to a square)."""
    size, out = photo.shape[0], config.crop
    if config.scale_min < 1:
        area = rng.uniform(config.scale_min, 1.0) * size * size
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = min(size, max(8, round(math.sqrt(area * aspect))))
        h = min(size, max(8, round(math.sqrt(area / aspect))))
    else:
        w = h = out
    y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    crop = photo[y : y + h, x : x + w]
    if (h, w) != (out, out):
        image = Image.fromarray(crop)
        crop = np.asarray(image.resize((out, out), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def make_crop(
    photo: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    stamps: list[np.ndarray] | None = None,
) -> np.ndarray:
    """One training crop: random (resized) crop and flip, and with `stamps`, a `config.paste`
    chance of a stamp pasted on; every random number from `rng`."""
    crop = random_crop(photo, config, rng)
    if stamps and config.paste and rng.random() < config.paste:
        crop = paste_stamp(crop, stamps[rng.integers(len(stamps))], rng)
    return np.ascontiguousarray(crop)


def sample_rng(seed: int, key: tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng([seed, 7, *key])


def crop_of(
    sample: Sample, config: TrainConfig, stamps: list[np.ndarray] | None = None
) -> np.ndarray:
    """A streamed photo -> its crop (decode, crop, flip, paste), seeded by its position."""
    return make_crop(decode_square(sample.image), config, sample_rng(config.seed, sample.key),
                     stamps)  # fmt: skip


def film_input(
    lightness: torch.Tensor, crops: np.ndarray, config: TrainConfig, step: int, rank: int
) -> torch.Tensor:
    """L (N, 1, S, S) of the RGB `crops` (N, S, S, 3) uint8 with a `config.film` share of its
    images replaced by the gray of a random film response (`random_film`: ortho, pan, pan
    behind a filter; deterministic in (seed, step, rank), from a generator of its own so that
    the old-print draws do not move); the target keeps the true ab."""
    if config.film <= 0:
        return lightness
    rng = np.random.default_rng([config.seed, step, rank, 4])
    out = lightness.detach().cpu().numpy().copy()
    for i in range(len(out)):
        if rng.random() < config.film:
            out[i, 0] = film_lightness(crops[i], random_film(rng))
    return torch.from_numpy(out).to(lightness.device)


def degraded_input(
    lightness: torch.Tensor, config: TrainConfig, step: int, rank: int
) -> torch.Tensor:
    """L (N, 1, S, S) with a `config.degrade` share of its images turned into old prints at
    random strengths (deterministic in (seed, step, rank)); the target keeps the clean ab."""
    if config.degrade <= 0:
        return lightness
    rng = np.random.default_rng([config.seed, step, rank, 3])
    out = lightness.detach().cpu().numpy().copy()
    for i in range(len(out)):
        if rng.random() < config.degrade:
            out[i, 0] = degrade_lightness(out[i, 0], random_old_print(rng), rng)
    return torch.from_numpy(out).to(lightness.device)


@dataclass
class Batch:
    step: int
    lightness: torch.Tensor  # (N, 1, S, S): the network's input (film, old print where asked)
    ab: torch.Tensor  # (N, 2, S/4, S/4): the targets' ab
    position: Position  # the stream's position after this batch
    hints: torch.Tensor | None = None  # (N, 3, S/4, S/4): simulated hints (-hints nets)


def hint_input(ab: torch.Tensor, config: TrainConfig, step: int, rank: int) -> torch.Tensor | None:
    """Simulated colour hints from the target ab for a hint-aware net (a `config.hints`
    share of the crops; deterministic in (seed, step, rank)); None for other nets."""
    if config.hints <= 0:
        return None
    rng = np.random.default_rng([config.seed, step, rank, 5])
    return simulated_planes(ab, rng, config.hints, config.hint_points)


def make_batch(
    taken: list[Sample],
    config: TrainConfig,
    step: int,
    rank: int,
    stamps: list[np.ndarray] | None = None,
    pool: ThreadPoolExecutor | None = None,
    pin: bool = False,
) -> Batch:
    work = lambda s: crop_of(s, config, stamps)  # noqa: E731
    crops = list(pool.map(work, taken)) if pool is not None else [work(s) for s in taken]
    rgb = np.stack(crops)
    lightness, ab = ab_targets(torch.from_numpy(rgb))
    lightness = film_input(lightness, rgb, config, step, rank)  # film first, then old prints
    lightness = degraded_input(lightness, config, step, rank)
    hints = hint_input(ab, config, step, rank)
    if pin:  # page-locked, for non-blocking copies to the GPU
        lightness, ab = lightness.pin_memory(), ab.pin_memory()
        hints = None if hints is None else hints.pin_memory()
    return Batch(step, lightness, ab, taken[-1].after, hints)


class Loader:
    """Batches for steps `start_step`.. of one rank, made in a background thread at most
    `depth` ahead of the step (a bounded queue). `wait_seconds` is how long the step waited."""

    def __init__(
        self,
        blocks: list[Block],
        config: TrainConfig,
        rank: int,
        world: int,
        start_step: int,
        position: Position,
        stamps: list[np.ndarray] | None = None,
        pin: bool = False,
        depth: int = 2,
    ) -> None:
        self.config, self.rank, self.stamps, self.pin = config, rank, stamps, pin
        self.stream = samples(blocks, config.seed, rank, world, config.shuffle_blocks, position)
        self.steps = range(start_step, config.steps)
        self.queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.wait_seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="train-loader", daemon=True)
        self.thread.start()

    def _put(self, item: Batch | BaseException | None) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        threads = self.config.loader_threads
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        try:
            for step in self.steps:
                taken = [next(self.stream) for _ in range(self.config.batch_size)]
                batch = make_batch(taken, self.config, step, self.rank, self.stamps, pool,
                                   self.pin)  # fmt: skip
                if not self._put(batch):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the step, which re-raises it
            self._put(exc)
        finally:
            if pool is not None:
                pool.shutdown(wait=False)

    def next(self) -> Batch:
        import time

        t0 = time.perf_counter()
        item = self.queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=10)

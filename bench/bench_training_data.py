"""The training data path against the training step: how many cores keep one GPU fed?

    python bench/bench_training_data.py

0. Preparation: milliseconds of one core per photo, and the prepared photo's size.
1. Prepared crops per second on ONE core (torch and numba on one thread): read the prepared
   Parquet blocks, decode each 256-px PNG square, random resized crop to 176 + flip, Lab,
   the targets' ab at the output resolution (`pipeline.training.stream.make_batch`, batch 16), with
   the time split into its parts.
2. The training step (forward, loss with soft-encoding, backward, Adam) on this CPU, batch 16
   of 176-px crops, for `eccv16` and the default `lite0`: crops per second.
3. Each network's training FLOPs per crop (torch's FLOP counter on the forward, x3 for the
   backward), and a GPU's crops per second estimated from them (see below: FLOP counts and
   a published figure, not measurements: no GPU here); divided by (1), the cores that keep
   that GPU fed.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from skimage import data
from torch.utils.flop_counter import FlopCounterMode

import models
from models.targets import rebalance_weights
from pipeline.training.config import TrainConfig
from pipeline.training.loop import init_net, make_optimizer, train_step
from pipeline.training.prepared import (
    PrepareSettings,
    ab_targets,
    decode_square,
    load,
    prepare_photo_why,
    prepare_shard,
)
from pipeline.training.stream import Position, make_batch, make_crop, sample_rng, samples

PHOTOS = 96
BATCH = 16
# GPU training rates are estimates, not measurements (no GPU here):
# - eccv16 (plain dense 3x3 convolutions, which keep tensor cores busy): its FLOPs at 35 % of
#   the data-sheet bf16/fp16 dense peak (A100 SXM 312 TFLOP/s, V100 125 TFLOP/s).
# - lite0 (depthwise convolutions: memory-bound, far below peak): NVIDIA's published
#   EfficientNet-B0 training rate, mixed precision, one V100 (DeepLearningExamples, PyTorch
#   EfficientNet README: 1352 img/s at 224 px, 0.39 GMAC = 0.78 GFLOP forward), scaled by
#   forward FLOPs to our net at 176 px; an A100 taken as 2x a V100.
PEAK_SHARE = 0.35
PEAKS = {"A100": 312e12, "V100": 125e12}
B0_V100_IMG_S, B0_FORWARD_FLOP = 1352.0, 0.78e9


def source_photo() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data.coffee()[:240, :320]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def source_archive(root: Path) -> Path:
    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    ids, blobs = [], []
    for i in range(PHOTOS):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 240), rng.integers(0, p.shape[1] - 320)
        buf = io.BytesIO()
        Image.fromarray(p[y : y + 240, x : x + 320]).save(buf, "JPEG", quality=90)
        ids.append(f"p{i:04d}")
        blobs.append(buf.getvalue())
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "image": blobs}), root / "part-00000.parquet")
    return root / "part-00000.parquet"


def data_rate(blocks: list, config: TrainConfig, batches: int = 12) -> dict[str, float]:
    torch.set_num_threads(1)
    stream = samples(blocks, config.seed, 0, 1, config.shuffle_blocks, Position())
    taken = [list(itertools.islice(stream, BATCH)) for _ in range(batches)]
    make_batch(taken[0], config, 0, 0)  # warm-up (numba, allocations)
    t0 = time.perf_counter()
    for step, batch in enumerate(taken):
        make_batch(batch, config, step, 0)
    whole = (time.perf_counter() - t0) / (batches * BATCH)
    flat = [s for b in taken for s in b]
    t0 = time.perf_counter()
    squares = [decode_square(s.image) for s in flat]
    decode = (time.perf_counter() - t0) / len(flat)
    t0 = time.perf_counter()
    crops = [
        make_crop(sq, config, sample_rng(0, s.key)) for sq, s in zip(squares, flat, strict=True)
    ]
    crop = (time.perf_counter() - t0) / len(flat)
    t0 = time.perf_counter()
    for i in range(0, len(crops), BATCH):
        ab_targets(torch.from_numpy(np.stack(crops[i : i + BATCH])))
    lab = (time.perf_counter() - t0) / len(flat)
    t0 = time.perf_counter()
    read = list(itertools.islice(samples(blocks, 1, 0, 1, 8, Position()), len(flat)))
    read_s = (time.perf_counter() - t0) / len(read)
    return {"crops_per_s": 1 / whole, "read_ms": 1e3 * read_s, "decode_ms": 1e3 * decode,
            "crop_ms": 1e3 * crop, "lab_targets_ms": 1e3 * lab}  # fmt: skip


def step_rate(arch: str, blocks: list, config: TrainConfig, steps: int) -> float:
    torch.set_num_threads(2)
    colorizer = models.build(arch)
    init_net(colorizer, config)
    optimizer = make_optimizer(colorizer.net, config)
    weights = rebalance_weights(colorizer.prior)
    stream = samples(blocks, 0, 0, 1, 8, Position())
    batch = make_batch(list(itertools.islice(stream, BATCH)), config, 0, 0)
    colorizer.net.train()
    train_step(colorizer.net, colorizer, optimizer, batch.lightness, batch.ab, weights, config)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(colorizer.net, colorizer, optimizer, batch.lightness, batch.ab, weights, config)
    return steps * BATCH / (time.perf_counter() - t0)


def train_flops_per_crop(arch: str, crop: int) -> float:
    net = models.build(arch).net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, crop, crop))
    return 3.0 * counter.get_total_flops()  # forward + backward (~2x the forward)


def main() -> None:
    config = TrainConfig(crop=176, prepared=256, scale_min=0.3, batch_size=BATCH)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = source_archive(Path(tmp) / "src")
        settings = PrepareSettings(prepared=256, val_fraction=0.0, fold=0)
        prepare_photo_why(source_photo(), 256)  # warm-up: numba JIT, first torch calls
        prepare_shard(str(src), str(Path(tmp) / "warm"), "shard-00000", settings)
        t0 = time.perf_counter()
        prepare_shard(str(src), str(Path(tmp) / "prep"), "shard-00000", settings)
        prep_ms = 1e3 * (time.perf_counter() - t0) / PHOTOS
        blocks = load(str(Path(tmp) / "prep"), ["shard-00000"], "bench").blocks["train"]
        size_kb = (Path(tmp) / "prep" / "train" / "shard-00000.parquet").stat().st_size / 1024
        print(
            f"preparation, one core: {prep_ms:.1f} ms per 320x240 JPEG photo (decode, resize "
            f"to the 256-px square, PNG, bin counts); {size_kb / PHOTOS:.0f} kB per prepared photo"
        )
        rate = data_rate(blocks, config)
        print(
            f"data path, one core: {rate['crops_per_s']:.1f} prepared crops/s "
            f"(per crop: read {rate['read_ms']:.2f} ms, PNG decode {rate['decode_ms']:.2f} ms, "
            f"crop+flip {rate['crop_ms']:.2f} ms, Lab+targets {rate['lab_targets_ms']:.2f} ms)"
        )
        for arch, steps in (("eccv16", 2), ("lite0", 6)):
            cpu = step_rate(arch, blocks, config, steps)
            flops = train_flops_per_crop(arch, config.crop)
            print(
                f"{arch}: CPU training step {cpu:.2f} crops/s (2 threads, fp32, batch 16); "
                f"{flops / 1e9:.1f} GFLOP per crop (forward x3)"
            )
            if arch == "eccv16":
                rates = {g: PEAK_SHARE * peak / flops for g, peak in PEAKS.items()}
                how = f"{PEAK_SHARE:.0%} of the bf16 peak"
            else:
                v100 = B0_V100_IMG_S * B0_FORWARD_FLOP / (flops / 3)
                rates = {"A100": 2 * v100, "V100": v100}
                how = "NVIDIA's EfficientNet-B0 V100 figure, scaled by FLOPs"
            for gpu, gpu_rate in rates.items():
                print(
                    f"  {gpu} ({how}): ~{gpu_rate:.0f} crops/s -> "
                    f"{gpu_rate / rate['crops_per_s']:.1f} cores to keep it fed"
                )


if __name__ == "__main__":
    main()

"""Archive benchmark (not collected by pytest). In one run on this machine it prints, on
Parquet archives of 1024-px grayscale JPEG scans (the archive case):

1. the marginal rate of the full colorize flow (Prefect + Ray actor), as a user runs it:
   (N_large - N_small) / (t_large - t_small) over a small and a large archive, so that
   start-up (Prefect's API, Ray, model load) cancels; for ECCV16 and for the shipped default;
2. the bare model forward at 256x256, as loaded (the limit), for each; the default again in
   bf16 (flow and forward) where the CPU has native bf16, and in int8 (its shipped int8 twin),
   with the ratios to fp32 (issue 31: int8's flow >= 1.8x fp32's);
3. an official-demo-style per-image loop (PIL open, skimage rgb2lab, resize, forward with
   batch 1, resize ab back, skimage lab2rgb, save) with the shipped default;
4. the ratios (goals of issue 12: ECCV16 >= 0.9x its forward; the default >= 0.55x its
   forward and >= 5x the loop); and the worker's peak memory on an archive and on one 10x
   larger.

    python bench/bench_archive.py [--small 48] [--large-eccv16 240] [--large-default 480]

Shards hold several batches, as real ones do (hundreds of images): within a shard the actor
overlaps decoding and encoding with inference, so a one-batch shard would run them serially.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from PIL import Image
from skimage import color, data, transform

import models
from pipeline.colorize.int8 import Int8Forward
from pipeline.colorize.precision import PRECISIONS, native_bf16

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field")


def photo_jpegs(n: int, side: int = 1024, gray: bool = False) -> list[bytes]:
    out = []
    for i in range(n):
        arr = getattr(data, PHOTOS[i % len(PHOTOS)])()
        img = Image.fromarray(arr).convert("L" if gray else "RGB")
        scale = side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        if i // len(PHOTOS) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # not all identical
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_archive(root: Path, blobs: list[bytes], shard_size: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, len(blobs), shard_size)):
        chunk = blobs[start : start + shard_size]
        ids = [f"img-{start + i:06d}" for i in range(len(chunk))]
        pq.write_table(pa.table({"id": ids, "image": chunk}), root / f"part-{s:05d}.parquet")


def run_flow(
    src: Path, dest: Path, model: str, batch_size: int, precision: str = "fp32"
) -> tuple[dict, float, list[dict]]:
    import json

    from flows.colorize import colorize_archive

    t0 = time.perf_counter()
    result = colorize_archive(
        str(src), str(dest), model=model, batch_size=batch_size, precision=precision
    )
    wall = time.perf_counter() - t0
    stats = [json.loads(p.read_text()) for p in sorted((dest / "_stats").glob("*.json"))]
    return result, wall, stats


def bare_forward(
    model: models.Colorizer, batch: int, precision: str = "fp32", batches: int = 4, repeats: int = 3
) -> float:
    """images/s of the network alone (`logits`, no decoding) at 256x256 in `precision`
    (autocast, as the workers): the best of `repeats` windows of `batches` batches, so that a
    slow moment does not flatter the ratio."""
    x = torch.rand(batch, 1, 256, 256) * 100
    best = 0.0
    dtype = PRECISIONS[precision]
    # int8: the model's int8 twin, as a worker compiles it
    logits = (
        Int8Forward(models.DEFAULT_MODEL, model).logits if precision == "int8" else model.logits
    )
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(batches):
                logits(x)
            best = max(best, batch * batches / (time.perf_counter() - t0))
    return best


def reference_loop(model: models.Colorizer, blobs: list[bytes], out: Path) -> float:
    """What one-file-at-a-time tools do, on the same model."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, blob in enumerate(blobs):
        rgb = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")) / 255.0
        lab = color.rgb2lab(rgb)
        small = transform.resize(lab[..., 0], (256, 256))
        with torch.inference_mode():
            ab = model.predict_ab(torch.from_numpy(small).float()[None, None])[0].numpy()
        ab_full = transform.resize(ab.transpose(1, 2, 0), rgb.shape[:2])
        result = color.lab2rgb(np.concatenate([lab[..., :1], ab_full], axis=-1))
        Image.fromarray((result * 255).round().astype(np.uint8)).save(out / f"{i}.jpg", quality=95)
    return len(blobs) / (time.perf_counter() - t0)


def marginal_rate(
    work: Path,
    name: str,
    model: str,
    small: int,
    large: int,
    shard_size: int,
    batch: int,
    precision: str = "fp32",
) -> tuple[float, float, float]:
    """(marginal images/s, seconds on the small archive, on the large) of the colorize flow."""
    walls = []
    for n in (small, large):
        src = work / f"{name}-{n}"
        write_archive(src, photo_jpegs(n, gray=True), shard_size=shard_size)
        _, wall, stats = run_flow(src, work / f"{name}-{n}-out", model, batch, precision)
        assert sum(s["ok"] for s in stats) == n, "every scan colorized"
        walls.append(wall)
    return (large - small) / (walls[1] - walls[0]), walls[0], walls[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=48, help="scans in the small archive")
    parser.add_argument("--large-eccv16", type=int, default=240)
    parser.add_argument("--large-default", type=int, default=480)
    parser.add_argument("--shard-size", type=int, default=48)
    parser.add_argument("--memory-images", type=int, default=24, help="x1 and x10 for memory")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-archive-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    eccv16_path = work / "eccv16-untrained.safetensors"  # speed does not depend on the weights
    models.save(models.build("eccv16").eval(), eccv16_path)
    runs = {  # name: (checkpoint, large archive, batch size, precision)
        "eccv16": (str(eccv16_path), args.large_eccv16, 8, "fp32"),
        "default": (str(models.DEFAULT_MODEL), args.large_default, 16, "fp32"),
    }
    if native_bf16():  # the same archive in bf16, where this CPU has it (issue 31)
        runs["default-bf16"] = (str(models.DEFAULT_MODEL), args.large_default, 16, "bf16")
    runs["default-int8"] = (str(models.DEFAULT_MODEL), args.large_default, 16, "int8")
    rates: dict[str, tuple[float, float, float]] = {}
    for name, (path, large, batch, precision) in runs.items():
        rates[name] = marginal_rate(
            work, name, path, args.small, large, args.shard_size, batch, precision
        )
    ray.shutdown()  # nothing of the flows' left running beside the baselines
    torch.set_num_threads(os.cpu_count() or 1)
    forward = {
        name: bare_forward(models.load(path), batch, precision)
        for name, (path, _, batch, precision) in runs.items()
    }
    loop = reference_loop(
        models.load(models.DEFAULT_MODEL), photo_jpegs(args.small, gray=True), work / "loop"
    )

    print(f"\n1024-px gray JPEG scans, shards of {args.shard_size}, {os.cpu_count()} CPUs")
    for name, (_, large, batch, _) in runs.items():
        rate, t_small, t_large = rates[name]
        print(f"  {name}: colorize {args.small} scans in {t_small:.1f} s, {large} in "
              f"{t_large:.1f} s: marginal {rate:6.2f} images/s")  # fmt: skip
        print(f"  {name}: bare forward 256x256, batch {batch}: {forward[name]:6.2f} images/s")
        print(f"  {name}: colorize / bare forward {rate / forward[name]:5.2f}x")
    for lower in ("bf16", "int8"):
        if f"default-{lower}" in runs:
            flow_ratio = rates[f"default-{lower}"][0] / rates["default"][0]
            forward_ratio = forward[f"default-{lower}"] / forward["default"]
            print(f"  default: {lower} / fp32: colorize {flow_ratio:5.2f}x, "
                  f"forward {forward_ratio:5.2f}x")  # fmt: skip
    print(f"  default: per-image loop {loop:6.2f} images/s; colorize / loop "
          f"{rates['default'][0] / loop:5.2f}x")  # fmt: skip

    small_path = work / "small-untrained.safetensors"
    models.save(models.build("small"), small_path)
    peaks = []
    for factor in (1, 10):
        n = args.memory_images * factor
        write_archive(work / f"mem{factor}", photo_jpegs(n), shard_size=8)
        _, mem_wall, mem_stats = run_flow(work / f"mem{factor}", work / f"mem{factor}-out",
                                          str(small_path), 8)  # fmt: skip
        peaks.append(max(s["peak_rss_mb"] for s in mem_stats))
        print(
            f"  memory: {n:5d} images ({n / mem_wall:5.2f} images/s end to end, small net): "
            f"worker peak RSS {peaks[-1]:7.1f} MB"
        )
    print(f"  peak memory 10x archive / 1x archive: {peaks[1] / peaks[0]:.2f}x (goal: flat)")


if __name__ == "__main__":
    main()

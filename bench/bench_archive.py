"""Archive benchmark (not collected by pytest). In one run on this machine it prints:

1. images/s of the full flow (Prefect + Ray actor + ECCV16) on Parquet archives of 1024-px
   JPEGs, grayscale scans (the archive case) and colour photos (whose ground truth adds PSNR,
   SSIM and AuC): end to end (with start-up), and the actor's steady rate (images / busy s);
2. images/s of the bare model forward at 256x256 on the same number of images (the limit);
3. images/s of a reference per-image loop (PIL open, skimage rgb2lab, resize, forward with
   batch 1, resize ab back, skimage lab2rgb, save);
4. the ratios; and the worker's peak memory on an archive and on one 10x larger.

    python bench/bench_archive.py [--images 48] [--shard-size 24] [--memory-images 24]

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
import torch
from PIL import Image
from skimage import color, data, transform

import models

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


def run_flow(src: Path, dest: Path, model: str, batch_size: int) -> tuple[dict, float, list[dict]]:
    import json

    from flows.colorize import colorize_archive

    t0 = time.perf_counter()
    result = colorize_archive(str(src), str(dest), model=model, batch_size=batch_size)
    wall = time.perf_counter() - t0
    stats = [json.loads(p.read_text()) for p in sorted((dest / "_stats").glob("*.json"))]
    return result, wall, stats


def bare_forward(model: models.Colorizer, n: int, batch: int) -> float:
    x = torch.rand(batch, 1, 256, 256) * 100
    with torch.inference_mode():
        model.predict_ab(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n:
            model.predict_ab(x[: min(batch, n - done)])
            done += min(batch, n - done)
    return n / (time.perf_counter() - t0)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=24)
    parser.add_argument("--memory-images", type=int, default=24, help="x1 and x10 for memory")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-archive-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    eccv16 = models.build("eccv16").eval()
    eccv16_path = work / "eccv16-untrained.safetensors"  # speed does not depend on the weights
    models.save(eccv16, eccv16_path)
    # the archive case (grayscale scans), and colour photos, whose ground truth adds PSNR, SSIM
    # and AuC to the per-image work
    steady: dict[str, float] = {}
    e2e: dict[str, float] = {}
    for kind in ("gray", "colour"):
        blobs = photo_jpegs(args.images, gray=kind == "gray")
        write_archive(work / f"archive-{kind}", blobs, shard_size=args.shard_size)
        _, wall, stats = run_flow(
            work / f"archive-{kind}", work / f"out-{kind}", str(eccv16_path), args.batch_size
        )
        e2e[kind] = args.images / wall
        steady[kind] = args.images / sum(s["seconds"] for s in stats)
    torch.set_num_threads(os.cpu_count() or 1)
    forward = bare_forward(models.load(eccv16_path), args.images, args.batch_size)
    reference = reference_loop(models.load(eccv16_path), blobs, work / "reference")

    print(
        f"\nECCV16, {args.images} JPEGs of 1024 px in shards of {args.shard_size}, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs, fp32"
    )
    for kind in ("gray", "colour"):
        print(f"  flow on {kind:6s} JPEGs, end to end (with start-up) {e2e[kind]:6.2f} images/s")
        print(f"  flow on {kind:6s} JPEGs, steady (actor busy time)  {steady[kind]:6.2f} images/s")
    bare = f"bare forward 256x256, batch {args.batch_size}"
    print(f"  {bare:50s}{forward:6.2f} images/s")
    print(f"  reference per-image loop (colour JPEGs)           {reference:6.2f} images/s")
    for kind in ("gray", "colour"):
        print(
            f"  {kind:6s}: flow steady / bare forward   {steady[kind] / forward:5.2f}x  (goal 0.9x)"
        )
        print(
            f"  {kind:6s}: flow steady / reference loop {steady[kind] / reference:5.2f}x  (goal 3x)"
        )
        print(f"  {kind:6s}: flow end-to-end / reference  {e2e[kind] / reference:5.2f}x")

    small_path = work / "small-untrained.safetensors"
    models.save(models.build("small"), small_path)
    peaks = []
    for factor in (1, 10):
        n = args.memory_images * factor
        write_archive(work / f"mem{factor}", photo_jpegs(n), shard_size=8)
        _, mem_wall, mem_stats = run_flow(
            work / f"mem{factor}", work / f"mem{factor}-out", str(small_path), args.batch_size
        )
        peaks.append(max(s["peak_rss_mb"] for s in mem_stats))
        print(
            f"  memory: {n:5d} images ({n / mem_wall:5.2f} images/s end to end, small net): "
            f"worker peak RSS {peaks[-1]:7.1f} MB"
        )
    print(f"  peak memory 10x archive / 1x archive: {peaks[1] / peaks[0]:.2f}x (goal: flat)")


if __name__ == "__main__":
    main()

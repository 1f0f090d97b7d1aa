"""Core benchmarks (not collected by pytest): Lab conversion vs scikit-image, network forward.

    python bench/bench_core.py [--threads 2]

Prints figures and ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from skimage import color, data, transform

from models import build
from pipeline.color import lab_to_rgb, rgb_to_lab


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--images", type=int, default=16, help="images per forward measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")

    rgb = transform.resize(data.astronaut(), (2048, 2048), preserve_range=False).astype(np.float32)
    rgb_t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    lab_np = color.rgb2lab(rgb)
    lab_t = torch.from_numpy(lab_np.astype(np.float32)).permute(2, 0, 1).contiguous()
    sk_fwd = best_of(lambda: color.rgb2lab(rgb))
    ours_fwd = best_of(lambda: rgb_to_lab(rgb_t))
    sk_back = best_of(lambda: color.lab2rgb(lab_np))
    ours_back = best_of(lambda: lab_to_rgb(lab_t))
    print("Lab conversion, 2048x2048:")
    print(
        f"  rgb->lab  skimage {sk_fwd * 1e3:7.1f} ms   ours {ours_fwd * 1e3:7.1f} ms   "
        f"speed-up {sk_fwd / ours_fwd:4.1f}x"
    )
    print(
        f"  lab->rgb  skimage {sk_back * 1e3:7.1f} ms   ours {ours_back * 1e3:7.1f} ms   "
        f"speed-up {sk_back / ours_back:4.1f}x"
    )

    print(f"Forward at 256x256, fp32, {args.images} images:")
    rates: dict[tuple[str, str], float] = {}
    for arch, batch in (("eccv16", 8), ("small", 16), ("lite0", 16)):
        x = torch.rand(batch, 1, 256, 256) * 100
        n_batches = max(1, args.images // batch)
        # models.load gives channels-last weights; plain NCHW is the baseline
        for layout in (torch.contiguous_format, torch.channels_last):
            model = build(arch).eval().to(memory_format=layout)

            def run(model=model, x=x, n_batches=n_batches) -> None:
                with torch.inference_mode():
                    for _ in range(n_batches):
                        model.predict_ab(x)

            seconds = best_of(run, repeats=2)
            rate = n_batches * batch / seconds
            params = sum(p.numel() for p in model.net.parameters()) / 1e6
            name = "channels-last" if layout == torch.channels_last else "NCHW"
            print(
                f"  {arch:7s} {params:5.1f} M params  batch {batch:2d}  {name:13s} "
                f"{rate:6.1f} images/s"
            )
            rates[arch, name] = rate
        gain = rates[arch, "channels-last"] / rates[arch, "NCHW"]
        print(f"  {arch}: channels-last / NCHW {gain:.2f}x")
    small, eccv16 = rates["small", "channels-last"], rates["eccv16", "channels-last"]
    lite0 = rates["lite0", "channels-last"]
    print(f"  small / eccv16 (channels-last): {small / eccv16:.1f}x")
    print(f"  lite0 / small (channels-last): {lite0 / small:.2f}x (the shipped default is lite0)")


if __name__ == "__main__":
    main()

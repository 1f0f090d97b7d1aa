"""Core benchmarks (not collected by pytest): Lab conversion vs scikit-image (ours on the CPU:
`pipeline.imaging.lab_cpu`, and the torch one that runs on a GPU), the annealed-mean decoding, and
the network forward.

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

from models import build, read_card
from models.checkpoint import DEFAULT_MODEL
from models.decode import annealed_mean_from_logits, uncertainty
from pipeline.imaging import lab_cpu
from pipeline.imaging.color import lab_to_rgb, rgb_to_lab
from pipeline.imaging.decode_cpu import decode


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

    rgb8 = (transform.resize(data.astronaut(), (2048, 2048)) * 255).round().astype(np.uint8)
    rgb = rgb8.astype(np.float32) / 255.0  # what skimage gets: the same 8-bit pixels
    rgb_t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    lab_np = color.rgb2lab(rgb)
    lab_np[..., 1:] *= 1.3  # some colours out of the sRGB gamut, clipped on the way back
    lab_t = torch.from_numpy(lab_np.astype(np.float32)).permute(2, 0, 1).contiguous()
    l_np, ab_np = lab_t[0].numpy(), lab_t[1:].numpy()
    fwd = {
        "skimage": best_of(lambda: color.rgb2lab(rgb)),
        "torch": best_of(lambda: rgb_to_lab(rgb_t)),
        "lab_cpu": best_of(lambda: lab_cpu.rgb8_to_lab(rgb8)),
    }
    back = {
        "skimage": best_of(lambda: color.lab2rgb(lab_np)),
        "torch": best_of(lambda: lab_to_rgb(lab_t)),
        "lab_cpu": best_of(lambda: lab_cpu.lab_to_rgb(l_np, ab_np)),
    }
    l_ours, ab_ours = lab_cpu.rgb8_to_lab(rgb8)
    ref = color.rgb2lab(rgb.astype(np.float64))
    err_fwd = max(
        np.abs(l_ours - ref[..., 0]).max(), np.abs(ab_ours - ref[..., 1:].transpose(2, 0, 1)).max()
    )
    err_back = np.abs(
        lab_cpu.lab_to_rgb(l_np, ab_np) - color.lab2rgb(lab_np.astype(np.float64))
    ).max()
    print("Lab conversion, 2048x2048, one thread for lab_cpu (ms; speed-up over skimage):")
    for name, times, err in (("rgb->lab", fwd, err_fwd), ("lab->rgb", back, err_back)):
        line = "   ".join(f"{k} {v * 1e3:6.1f}" for k, v in times.items())
        print(f"  {name}  {line}   lab_cpu {times['skimage'] / times['lab_cpu']:4.1f}x, "
              f"max error {err:.1e} (goal >= 5x, <= 1e-3)")  # fmt: skip

    centers = build("lite0").centers
    logits = torch.randn(8, centers.shape[0], 64, 64).contiguous(memory_format=torch.channels_last)
    lightness = torch.rand(8, 1, 256, 256) * 100
    with torch.inference_mode():
        in_torch = best_of(
            lambda: (
                annealed_mean_from_logits(logits, centers),
                uncertainty(logits, lightness, centers),
            )
        )
        in_numba = best_of(lambda: decode(logits, centers, 0.38, lightness))
    print(f"Annealed mean + uncertainty, 8 x {centers.shape[0]} bins x 64 x 64: torch "
          f"{in_torch * 1e3 / 8:5.1f} ms/image, decode_cpu {in_numba * 1e3 / 8:5.1f} "
          f"({in_torch / in_numba:4.1f}x)")  # fmt: skip

    print(f"Forward at 256x256, fp32, {args.images} images:")
    rates: dict[tuple[str, str], float] = {}
    default = read_card(DEFAULT_MODEL)["config"]["arch"]
    archs = dict.fromkeys(("eccv16", "small", "lite0", default))
    for arch, batch in ((a, 8 if a == "eccv16" else 16) for a in archs):
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
    print(f"  small / eccv16 (channels-last): {small / eccv16:.1f}x")
    for arch in dict.fromkeys(("lite0", default)):
        note = " (the shipped default; goal >= 0.45x)" if arch == default else ""
        ratio = rates[arch, "channels-last"] / small
        print(f"  {arch} / small (channels-last): {ratio:.2f}x{note}")
    model = build(default, flip_average=True).eval().to(memory_format=torch.channels_last)
    x = torch.rand(16, 1, 256, 256) * 100

    def flipped() -> None:
        with torch.inference_mode():
            for _ in range(max(1, args.images // 16)):
                model.predict_ab(x)

    rate = max(1, args.images // 16) * 16 / best_of(flipped, repeats=2)
    plain = rates[default, "channels-last"]
    print(f"  {default} with flip averaging: {rate:6.1f} images/s ({rate / plain:.2f}x without)")


if __name__ == "__main__":
    main()

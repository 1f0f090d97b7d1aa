"""Colorize a batch: L at working size -> network -> annealed mean -> ab upsampled to the
ORIGINAL size -> joined with the original L -> RGB. The output never changes size and keeps
the input's L exactly. The network runs on a batch; the rest runs per image: on a GPU on the
model's device until the final (quantised) RGB, on a CPU in one fused pass (lab_cpu)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models import Colorizer
from models.hints import Hint
from pipeline.colorize.hints import batch_planes
from pipeline.colorize.int8 import Int8Forward
from pipeline.colorize.precision import PRECISIONS, check_precision
from pipeline.imaging import decode_cpu
from pipeline.imaging.color import lab_to_rgb
from pipeline.imaging.images import decode_pil, rgb_to_pil
from pipeline.imaging.lab_cpu import join_lab
from pipeline.imaging.metrics import colourfulness_of_sums
from pipeline.imaging.resize_cpu import shrink


def working_batch(lightness: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """Full-size L maps (H, W) -> (N, 1, size, size) on `device`, area-averaged (antialiased):
    on a CPU by `resize_cpu.shrink`, elsewhere by torch on the device (the same filter).

    The net sees a square (as the released model and popular tools do); colour is low frequency
    and is put back on the full-resolution L afterwards, so the aspect ratio is never lost.
    """
    if device.type == "cpu":
        small = np.stack([shrink(l_map, (size, size)) for l_map in lightness])
        return torch.from_numpy(small)[:, None]
    full = [to_device(l_map, device)[None, None] for l_map in lightness]
    return torch.cat(
        [F.interpolate(l_map, size=(size, size), mode="bilinear", antialias=True) for l_map in full]
    )


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`; to a GPU from pinned memory without blocking the host."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@torch.inference_mode()
def predict_low(
    model: Colorizer,
    lightness: Sequence[np.ndarray],
    temperature: float | None = None,
    precision: str = "fp32",
    hints: Sequence[Sequence[Hint]] | None = None,
    int8: Int8Forward | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L maps (H, W) float32 -> the network's ab (N, 2, h, w) at its output size and each
    image's uncertainty (N,), on its device: `working_batch`, then `predict_working`.
    `hints`: each image's colour hints, for a hint-aware model (None or empty lists: none).

    The batched step; `finish` then works image by image (a worker runs it in its threads).
    """
    batch = working_batch(lightness, model.working_size, model.device)
    grid = model.working_size // 4  # the network's output grid, where hints are placed
    planes = None if hints is None else batch_planes(hints, grid, grid, model.device)
    return predict_working(model, batch, temperature, precision, planes, int8)


@torch.inference_mode()
def predict_working(
    model: Colorizer,
    batch: torch.Tensor,
    temperature: float | None = None,
    precision: str = "fp32",
    hints: torch.Tensor | None = None,
    int8: Int8Forward | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's input (N, 1, s, s) on its device -> (ab (N, 2, h, w), uncertainty (N,)).
    `hints`: hint planes (N, 3, s/4, s/4) for a hint-aware model (models/hints.py).
    `precision` "bf16" runs the network (not the decoding) in bf16 under autocast, on CUDA or
    on a CPU with native bf16 (1.6x fp32's forward on this project's CPUs); "fp16" on CUDA
    only (`check_precision`); "int8" by the model's int8 twin, `int8` (pipeline/colorize/
    int8.py), on a CPU (a hinted image's answer near its hints from the torch network)."""
    dtype = PRECISIONS[precision]
    if precision != "fp32":
        check_precision(precision, model.device)
    if precision == "int8":
        if int8 is None:
            raise ValueError("--precision int8 needs the model's int8 twin (Int8Forward)")
        # the twin's automatic logits for every image, the torch network's hinted answer
        # within the hints' reach for the hinted ones only: an image's colours do not
        # depend on whether its batch holds hinted neighbours
        automatic = int8.logits(batch)
        logits = automatic if hints is None else model.logits(batch, hints, automatic)
    else:
        with torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model.logits(batch, hints).float()
    if model.device.type == "cpu":  # the same decoding in one pass instead of ten
        t = model.temperature if temperature is None else temperature
        ab, doubt = decode_cpu.decode(logits, model.centers, t, batch)
        return model.with_hints(model.with_gain(ab), hints, batch), doubt
    ab, doubt = model.decode(logits.float(), batch, temperature)
    return model.with_hints(ab, hints, batch), doubt


def predict_low_ab(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> torch.Tensor:
    """`predict_low` without the uncertainty."""
    return predict_low(model, lightness, temperature)[0]


@torch.inference_mode()
def upsample_ab(ab_low: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """ab (2, h, w) -> (2, H, W), bilinear."""
    return F.interpolate(ab_low[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.inference_mode()
def finish(
    l_map: np.ndarray,
    ab_low: torch.Tensor,
    dtype: type = np.float32,
    keep_ab: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """One image: its full-size L (H, W) and low-res ab (2, h, w) -> (RGB (H, W, 3) on the host
    as float32 in [0, 1], uint8 or uint16; the full-size ab (2, H, W) float32 if `keep_ab`;
    the RGB's colourfulness where it came with the pixels, else None).

    On a CPU, `lab_cpu.join_lab` does it in one pass (and, for 8-bit RGB, sums what the
    colourfulness needs as it writes each row); elsewhere the join and conversion run on ab's
    device and only the quantised RGB comes back.
    """
    if ab_low.device.type == "cpu":
        sums = np.zeros(4, np.int64)
        out, full_ab = join_lab(l_map, ab_low.numpy(), dtype, keep_ab, sums)
        eight_bit = out.dtype == np.uint8
        return out, full_ab, colourfulness_of_sums(sums, l_map.size, 255.0) if eight_bit else None
    lightness = to_device(l_map, ab_low.device)
    ab = upsample_ab(ab_low, lightness.shape)
    rgb = lab_to_rgb(torch.cat([lightness[None], ab])).permute(1, 2, 0)
    if dtype is not np.float32:  # quantised on the device: less to copy back
        wide = torch.int32 if dtype is np.uint16 else torch.uint8
        rgb = (rgb * float(np.iinfo(dtype).max) + 0.5).to(wide)
    rgb_host: np.ndarray = rgb.cpu().numpy().astype(dtype, copy=False)
    return rgb_host, ab.cpu().numpy() if keep_ab else None, None


def colorize_lightness(
    model: Colorizer, lightness: Sequence[np.ndarray], temperature: float | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """L maps (H, W) -> (RGB (H, W, 3) in [0, 1], predicted ab (2, H, W)), float32, on the host."""
    ab_low = predict_low_ab(model, lightness, temperature)
    out = []
    for l_map, ab_one in zip(lightness, ab_low, strict=True):
        rgb, ab, _ = finish(l_map, ab_one)
        assert ab is not None  # keep_ab
        out.append((rgb, ab))
    return out


def colorize_images(
    model: Colorizer, images: Sequence[Image.Image], temperature: float | None = None
) -> list[Image.Image]:
    """PIL images (any supported mode) -> colorized 8-bit RGB PIL images of the same size."""
    lightness = [decode_pil(img).lightness for img in images]
    return [rgb_to_pil(rgb) for rgb, _ in colorize_lightness(model, lightness, temperature)]

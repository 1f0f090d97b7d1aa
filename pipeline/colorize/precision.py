"""The network's number type (issue 31): which ones a device can run (`check_precision`), and
`auto`, the fastest one whose colours stay within the tolerance on the hardware a worker
finds (`resolve_precision`).

`auto`, by speed on this project's CPUs (docs/benchmarks.md: the colorize flow at 1.86x fp32's
rate in int8, 1.44x in bf16):
- a CPU: int8 when the model has an int8 twin whose card shows it within the tolerance
  (`twin_within_tolerance`), else bf16 when the CPU computes in bf16 itself, else fp32;
- a GPU: bf16 where the GPU has it, else fp32 (fp16's narrow range can overflow: asked only).
Each worker resolves it for itself, so a cluster of CPU and GPU nodes runs each at its best;
DEST's manifest records `auto` and each shard's stats the precision that ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.colorize.int8 import NoInt8Twin, check_twin, twin_paths

# the network's number type: a torch autocast type, or None (fp32; int8: the int8 twin)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}
# what --precision takes: a number type, or `auto` (resolved by each worker)
CHOICES = (*PRECISIONS, "auto")

# the tolerance on the held-out photos (`evaluate --precision`): twin - fp32
TOLERANCE = {"auc_rebalanced_points": 0.3, "auc_points": 0.3,
             "colourfulness_percent_of_truth": 3.0, "uncertainty_spearman": 0.05}  # fmt: skip
# a twin measured only against fp32's ab (`archive-colorize quantize`'s check photos): the
# shipped default's p95 was 6.8 ab for AuCs within 0.03 points of fp32's
MAX_CHECK_AB_P95 = 10.0


def native_bf16() -> bool:
    """This CPU computes in bf16 itself (AVX512-BF16 or AMX, as oneDNN finds): without it, bf16
    is emulated and slower than fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(precision: str, device: torch.device) -> None:
    """A precision the network can run in on `device`, or a ValueError saying what to use."""
    if precision not in CHOICES:
        choices = ", ".join(CHOICES)
        raise ValueError(f"--precision must be one of {choices}, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("--precision int8 runs on CPU workers only; on CUDA use bf16 or fp32")
    if device.type == "cuda" or precision in ("fp32", "int8", "auto"):
        return
    if precision == "fp16":
        raise ValueError("--precision fp16 runs on CUDA workers only; on a CPU use bf16 or fp32")
    if precision == "bf16" and not native_bf16():
        raise ValueError(
            "--precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one "
            "would emulate it, slower than fp32: use --precision fp32"
        )


def twin_within_tolerance(card: dict[str, Any]) -> bool:
    """An int8 twin's card shows its colours within the tolerance of fp32's: by its `evaluate`
    figures on photos where it has them, else by its check photos' ab error."""
    measured = card.get("evaluate", {}).get("int8_minus_fp32")
    if measured is not None:
        return all(abs(measured[name]) <= limit for name, limit in TOLERANCE.items())
    p95 = card.get("check", {}).get("vs_fp32", {}).get("ab_p95")
    return p95 is not None and p95 <= MAX_CHECK_AB_P95


def auto_precision(device: str, twin_ok: bool, bf16: bool) -> str:
    """`auto` on a device ("cpu", "cuda"): the fastest number type within the tolerance, given
    whether the model has an int8 twin within it and whether the device computes in bf16."""
    if device == "cpu" and twin_ok:
        return "int8"
    return "bf16" if bf16 else "fp32"


def resolve_precision(precision: str, device: torch.device, model_path: str | Path) -> str:
    """The number type this worker runs: `precision` itself, or `auto`'s for this device and
    model (the checkpoint at `model_path`, with or without its int8 twin)."""
    if precision != "auto":
        return precision
    if device.type not in ("cpu", "cuda"):
        return "fp32"
    if device.type == "cuda":
        return auto_precision("cuda", False, torch.cuda.is_bf16_supported())
    try:
        check_twin(model_path, device)  # there, and built from these weights
    except NoInt8Twin:
        twin_ok = False
    else:
        twin_ok = twin_within_tolerance(json.loads(twin_paths(model_path)[1].read_text()))
    return auto_precision(device.type, twin_ok, native_bf16())

"""`--precision int8` on CPU workers (issue 31): a model's int8 twin, an OpenVINO IR of its
no-hint network quantized after training (nncf, calibrated on a recorded set of corpus
photos: its card `NAME.int8.json`), shipped beside the checkpoint as `NAME.int8.xml/.bin`.
Compiled once per actor; it gives the logits, and the annealed-mean decoding and everything
after stay fp32 torch. A hinted image's answer near its hints comes from the torch network
(the twin has no hint input); its automatic logits, as every image's, from the twin.

OpenVINO because it measured fastest of the int8 runtimes on this project's CPUs, with the
smallest error (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from models import Colorizer


class NoInt8Twin(ValueError):
    """int8 asked of a model without an int8 twin, or on a device the twin cannot run on."""


def twin_paths(model_path: str | Path) -> tuple[Path, Path]:
    """The IR and the card of a checkpoint's int8 twin: NAME.int8.xml, NAME.int8.json."""
    stem = Path(model_path).with_suffix("")
    return stem.with_name(stem.name + ".int8.xml"), stem.with_name(stem.name + ".int8.json")


def check_twin(model_path: str | Path, device: torch.device) -> None:
    """NoInt8Twin, saying what to do, unless `model_path` has an int8 twin `device` can run."""
    if device.type != "cpu":
        raise NoInt8Twin(
            f"--precision int8 runs on CPU workers only (this one has {device.type}): "
            "use bf16 or fp32 on a GPU"
        )
    xml, card = twin_paths(model_path)
    if not xml.exists() or not xml.with_suffix(".bin").exists() or not card.exists():
        raise NoInt8Twin(
            f"--precision int8: model {Path(model_path).name} has no int8 twin ({xml.name} and "
            "its .bin and .json beside it; the shipped default has one): build one with "
            "`archive-colorize quantize MODEL PHOTO_DIR`, or use --precision bf16 or fp32"
        )
    built_from = json.loads(card.read_text()).get("source_model", {}).get("sha256")
    weights = models.file_sha256(model_path)
    if built_from != weights:
        raise NoInt8Twin(
            f"--precision int8: the int8 twin beside {Path(model_path).name} was built from "
            f"other weights (sha256 {str(built_from)[:12]}, the checkpoint's is "
            f"{weights[:12]}): rebuild it with `archive-colorize "
            "quantize MODEL PHOTO_DIR`, or use --precision bf16 or fp32"
        )


class Int8Forward:
    """The int8 twin, compiled once (a worker's `__init__`); `logits(L)` as `Colorizer.logits`
    without hints."""

    def __init__(self, model_path: str | Path, model: Colorizer) -> None:
        check_twin(model_path, model.device)
        import openvino as ov  # only int8 workers load the runtime

        xml, card = twin_paths(model_path)
        self.card: dict[str, Any] = json.loads(card.read_text())
        self.l_center, self.l_scale = model.l_center, model.l_scale
        self.flip_average = model.flip_average  # the twin mirrors as the model does
        # f32: the ops left unquantized run in fp32 (on a CPU with bf16 OpenVINO's default
        # would run them in bf16)
        self.compiled = ov.Core().compile_model(
            str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        )
        self.request = self.compiled.create_infer_request()

    def logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """L in [0, 100] (N, 1, S, S) on the CPU -> logits (N, Q, S/4, S/4), float32."""
        x = ((lightness - self.l_center) / self.l_scale).float()
        logits = self.infer(x)
        if self.flip_average:
            logits = (logits + self.infer(x.flip(3)).flip(3)) / 2
        return logits

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer({0: x.contiguous().numpy()})
        return torch.from_numpy(np.array(next(iter(out.values())), copy=True))

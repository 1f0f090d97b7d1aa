"""Checkpoints: safetensors weights with the JSON model card in the file's metadata.

`save` also writes the card beside the weights as `<name>.json` for people and tools to read.
Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.colorizer import Colorizer, build

CARD_KEY = "model_card"
DEFAULT_MODEL = Path(__file__).parent / "weights" / "default.safetensors"


def file_sha256(path: str | Path) -> str:
    """The checkpoint file's sha256 (hex): which weights these are, whatever their name."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(colorizer: Colorizer) -> dict[str, Any]:
    """The card: architecture and its arguments, bins, prior, and what training recorded."""
    return {
        **colorizer.card,
        "config": colorizer.config(),
        "centers": colorizer.centers.tolist(),
        "prior": [round(p, 8) for p in colorizer.prior.tolist()],
    }


def save(colorizer: Colorizer, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card = model_card(colorizer)
    state = {k: v.detach().cpu().contiguous() for k, v in colorizer.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={CARD_KEY: json.dumps(card)})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def read_card(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if CARD_KEY not in metadata:
        raise ValueError(
            f"{path} has no model card in its metadata: was it written by models.save?"
        )
    card: dict[str, Any] = json.loads(metadata[CARD_KEY])
    return card


def load(path: str | Path = "default", device: str | torch.device = "cpu") -> Colorizer:
    """A Colorizer from a checkpoint written by `save` ("default" is the model shipped here)."""
    path = DEFAULT_MODEL if str(path) == "default" else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    card = read_card(path)
    config = dict(card["config"])
    arch = config.pop("arch")
    config.pop("num_bins", None)
    card_extra = {k: v for k, v in card.items() if k not in ("config", "centers", "prior")}
    model = build(arch, centers=torch.tensor(card["centers"]), card=card_extra, **config)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            state[key] = f.get_tensor(key)
    model.load_state_dict(state, strict=True)
    # channels-last (NHWC) convolutions: measured 1.1x (eccv16) to 1.2x (small) faster on CPU
    # (Module.to takes memory_format at run time; its type stubs omit it)
    return model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]

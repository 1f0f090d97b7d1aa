"""Convert the official ECCV16 release (`colorization_release_v2`) into our checkpoint format.

The release's state dict uses our module names (`model1.0.weight` ... `model8.6.bias`) plus
`model_out.weight` (2, 313, 1, 1): the fixed 1x1 conv that takes probabilities to ab / 110.
Its columns x 110 are the release's 313 bin centres. Its deploy net anneals with T = 0.38.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from models.colorizer import Colorizer, build

RELEASE_AB_SCALE = 110.0
RELEASE_TEMPERATURE = 0.38


def from_release_state_dict(state: Mapping[str, torch.Tensor]) -> Colorizer:
    if "model_out.weight" not in state:
        raise KeyError("not an ECCV16 release state dict: it has no 'model_out.weight'")
    centers = state["model_out.weight"][:, :, 0, 0].T.to(torch.float32) * RELEASE_AB_SCALE
    colorizer = build(
        "eccv16",
        centers=centers,
        temperature=RELEASE_TEMPERATURE,
        card={"source": "converted from the official ECCV16 release (colorization_release_v2)"},
    )
    net_state = {k: v for k, v in state.items() if k != "model_out.weight"}
    colorizer.net.load_state_dict(net_state, strict=True)
    return colorizer.eval()


def load_release(path: str | Path) -> Colorizer:
    """Read the release .pth without unpickling arbitrary objects (weights_only=True)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return from_release_state_dict(state)

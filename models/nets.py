"""The ECCV16 colorization network, top to bottom as the paper (Fig. 2) and its release draw it.

L (N, 1, H, W), already centred -> logits over Q ab bins (N, Q, H/4, W/4).

Eight conv blocks: 1-3 halve the resolution with their last (stride-2) conv, 5-6 are dilated
by 2 at 1/8 resolution, 8 upsamples by 2 with a transposed conv. BatchNorm closes blocks 1-7
(not 8, as in the release). A 1x1 conv classifies into Q bins. Module names and indices match
the released PyTorch port (`model1.0.weight` ... `model8.6.weight`), so its state dict loads
as is.

`width` scales every channel count: 1.0 is the paper's net (~32 M parameters); 0.25 is our
CPU-friendly "small" net (~2 M parameters), the same drawing at a quarter of the width.
"""

from __future__ import annotations

from torch import Tensor, nn

ECCV16_CHANNELS = (64, 128, 256, 512, 512, 512, 512, 256)


def conv_block(
    c_in: int, c_out: int, convs: int, *, last_stride: int = 1, dilation: int = 1, norm: bool = True
) -> nn.Sequential:
    """`convs` 3x3 conv+ReLU pairs (the last one with `last_stride`), then BatchNorm."""
    layers: list[nn.Module] = []
    for i in range(convs):
        stride = last_stride if i == convs - 1 else 1
        layers += [
            nn.Conv2d(
                c_in if i == 0 else c_out, c_out, 3, stride, padding=dilation, dilation=dilation
            ),
            nn.ReLU(inplace=True),
        ]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers)


class ECCV16Net(nn.Module):
    def __init__(self, num_bins: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, c6, c7, c8 = (max(8, round(c * width)) for c in ECCV16_CHANNELS)
        self.model1 = conv_block(1, c1, 2, last_stride=2)  # 1/2
        self.model2 = conv_block(c1, c2, 2, last_stride=2)  # 1/4
        self.model3 = conv_block(c2, c3, 3, last_stride=2)  # 1/8
        self.model4 = conv_block(c3, c4, 3)
        self.model5 = conv_block(c4, c5, 3, dilation=2)  # "a trous": wider context, same size
        self.model6 = conv_block(c5, c6, 3, dilation=2)
        self.model7 = conv_block(c6, c7, 3)
        self.model8 = nn.Sequential(  # back up to 1/4, then classify each pixel into Q bins
            nn.ConvTranspose2d(c7, c8, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            *conv_block(c8, c8, 2, norm=False),
            nn.Conv2d(c8, num_bins, 1),
        )

    def forward(self, lightness: Tensor) -> Tensor:
        x = self.model1(lightness)
        x = self.model2(x)
        x = self.model3(x)
        x = self.model4(x)
        x = self.model5(x)
        x = self.model6(x)
        x = self.model7(x)
        return self.model8(x)


ARCHITECTURES: dict[str, float] = {"eccv16": 1.0, "small": 0.25}


def make_net(arch: str, num_bins: int) -> ECCV16Net:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ECCV16Net(num_bins, width=ARCHITECTURES[arch])

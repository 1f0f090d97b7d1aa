"""The ECCV16 colorization network, top to bottom as the paper (Fig. 2) and its release draw it.

L (N, 1, H, W), already centred -> logits over Q ab bins (N, Q, H/4, W/4).

Eight conv blocks: 1-3 halve the resolution with their last (stride-2) conv, 5-6 are dilated
by 2 at 1/8 resolution, 8 upsamples by 2 with a transposed conv. BatchNorm closes blocks 1-7
(not 8, as in the release). A 1x1 conv classifies into Q bins. Module names and indices match
the released PyTorch port (`model1.0.weight` ... `model8.6.weight`), so its state dict loads
as is.

`width` scales every channel count: 1.0 is the paper's net (~32 M parameters); 0.25 is our
CPU-friendly "small" net (~2 M parameters), the same drawing at a quarter of the width.

`LiteColorNet` ("lite0", "lite2", ...) keeps the paper's input, output and head but learns its
features from ImageNet: an EfficientNet-Lite encoder (pretrained; see models/efficientnet.py),
a decoder back to 1/4 resolution that joins the encoder's maps at strides 32, 16, 8 and 4, and
the same 1x1 classifier over Q ab bins. Two decoders: "context" (two convs a scale, dilated
wide-context convs at 1/16 as the paper's blocks 5-6, and a global scene vector from the
ImageNet head mixed in at the top) and "plain" (one conv a scale, fewer channels: less to
fit when the training photos are few; "slim" is it at half the channels). The architecture's
name is `<encoder>` for the context decoder, `<encoder>-plain` or `<encoder>-slim` for the
others; `-hints` after it makes the net hint-aware (models/hints.py): the hints, spread over
the output grid by distance and likeness of L (`hints.propagate`), enter the decoder at each
of its four scales through a small conv branch, and the logits as a gain times their colour's
log-kernel over the bins; the branches' last layers and the gain start at zero, so that the
net starts as the automatic net it is initialised from, hints or none.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.efficientnet import HEAD_CHANNELS, EfficientNetLite, feature_channels, normalise
from models.hints import CHANNELS as HINT_CHANNELS
from models.hints import logit_bias, no_hints, propagate
from models.lab import lab_to_rgb

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


def conv_bn_relu(c_in: int, c_out: int, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class LiteColorNet(nn.Module):
    """Centred L (N, 1, H, W) -> logits over Q ab bins (N, Q, H/4, W/4); H, W multiples of 32.

    The encoder sees the gray image as the ImageNet net would see a gray photo: L (with a = b
    = 0) as sRGB, normalised. Its BatchNorm always keeps its ImageNet statistics (eval mode):
    batches of a few gray crops would give noisy statistics far from what the weights expect.
    `trainable_stages` sets how many of the encoder's top stages (and the ImageNet head) train;
    the rest is frozen. Channels of the decoder at strides 32, 16, 8, 4: `DECODERS`.
    """

    DECODERS: ClassVar[dict[str, tuple[int, ...]]] = {
        "context": (256, 128, 80, 48),
        "plain": (160, 112, 80, 64),
        "slim": (80, 56, 40, 32),
    }
    CONTEXT = 128  # width of the global scene vector

    def __init__(
        self,
        num_bins: int,
        encoder: str = "lite0",
        decoder: str = "context",
        trainable_stages: int = 0,
        dropout: float = 0.1,
        hint_centers: Tensor | None = None,
    ) -> None:
        super().__init__()
        c4, c8, c16, c32 = feature_channels(encoder)
        d32, d16, d8, d4 = self.DECODERS[decoder]
        self.encoder = EfficientNetLite(encoder)
        self.context: nn.Module | None = None
        if decoder == "context":
            self.context = nn.Sequential(
                nn.Linear(HEAD_CHANNELS, self.CONTEXT), nn.ReLU(inplace=True)
            )
            self.top = nn.Sequential(*conv_bn_relu(c32 + self.CONTEXT, d32))  # 1/32
            self.up16 = nn.Sequential(  # 1/16: wide context, dilated as the paper's blocks 5-6
                *conv_bn_relu(d32 + c16, d16), *conv_bn_relu(d16, d16, dilation=2)
            )
            self.up8 = nn.Sequential(*conv_bn_relu(d16 + c8, d8), *conv_bn_relu(d8, d8))  # 1/8
            self.up4 = nn.Sequential(*conv_bn_relu(d8 + c4, d4), *conv_bn_relu(d4, d4))  # 1/4
        else:  # plain or slim: one conv a scale
            self.top = nn.Sequential(*conv_bn_relu(c32, d32))
            self.up16 = nn.Sequential(*conv_bn_relu(d32 + c16, d16))
            self.up8 = nn.Sequential(*conv_bn_relu(d16 + c8, d8))
            self.up4 = nn.Sequential(*conv_bn_relu(d8 + c4, d4))
        self.classify = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(d4, num_bins, 1))
        # hint-aware (given the ab bins' centres): one branch per decoder scale (1/32, 1/16,
        # 1/8, 1/4) added to its output, and a gain on the hint colour's log-kernel over the
        # bins added to the logits; all start at zero
        self.hint_branches: nn.ModuleList | None = None
        if hint_centers is not None:
            self.hint_branches = nn.ModuleList(hint_branch(c) for c in (d32, d16, d8, d4))
            self.hint_gain = nn.Parameter(torch.zeros(()))
            self.register_buffer("hint_centers", hint_centers.clone(), persistent=False)
        self._nothing: dict[tuple[Any, ...], Tensor] = {}  # see `branch_of_nothing`
        self.set_trainable_stages(trainable_stages)

    def set_trainable_stages(self, count: int) -> None:
        """Train the top `count` encoder stages (and the head); freeze the rest."""
        self.trainable_stages = count
        stages = len(self.encoder.stages)
        for i, module in enumerate([self.encoder.stem, *self.encoder.stages]):
            module.requires_grad_(i > stages - count)  # the stem is index 0
        self.encoder.head.requires_grad_(count > 0)
        self.encoder.fc.requires_grad_(False)  # the ImageNet classes are never used

    def set_dropout(self, rate: float) -> None:
        """The classifier's dropout while training (inference never uses it)."""
        dropout = self.classify[0]
        assert isinstance(dropout, nn.Dropout2d)
        dropout.p = rate

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The decoder's and classifier's (not the hint branches')."""
        return [p for n, p in self.named_parameters() if not n.startswith(("encoder.", "hint_"))]

    def hint_parameters(self) -> list[nn.Parameter]:
        if self.hint_branches is None:
            return []
        return [*self.hint_branches.parameters(), self.hint_gain]

    def train(self, mode: bool = True) -> LiteColorNet:
        super().train(mode)
        self.encoder.eval()  # ImageNet BatchNorm statistics, always (see the class docstring)
        return self

    @property
    def takes_hints(self) -> bool:
        return self.hint_branches is not None

    def forward(self, lightness: Tensor, hints: Tensor | None = None) -> Tensor:
        """`hints`: (N, 3, H/4, W/4) planes (models/hints.py) for a hint-aware net; None is
        no hints."""
        gray = lab_to_rgb(F.pad(lightness * 100.0 + 50.0, (0, 0, 0, 0, 0, 2)))  # a = b = 0
        f4, f8, f16, f32 = self.encoder.features(normalise(gray))
        if self.context is not None:
            scene = self.context(self.encoder.head(f32).mean(dim=(2, 3)))
            f32 = torch.cat([f32, scene[:, :, None, None].expand(-1, -1, *f32.shape[2:])], 1)
        dense = self.spread_hints(hints, lightness, f4)
        x = self.with_hints(0, self.top(f32), dense)
        x = self.with_hints(1, self.up16(torch.cat([upsample(x, f16), f16], 1)), dense)
        x = self.with_hints(2, self.up8(torch.cat([upsample(x, f8), f8], 1)), dense)
        x = self.with_hints(3, self.up4(torch.cat([upsample(x, f4), f4], 1)), dense)
        logits = self.classify(x)
        if dense is not None and bool(dense[:, 2].any()):  # (the bias is 0 with no hints)
            centers = self.hint_centers
            assert isinstance(centers, Tensor)
            logits = logits + self.hint_gain * logit_bias(dense, centers)
        return logits

    def spread_hints(self, hints: Tensor | None, lightness: Tensor, f4: Tensor) -> Tensor | None:
        """Sparse hint planes -> dense ones on the output grid (`hints.propagate`); None for
        an automatic net (which refuses hints)."""
        if self.hint_branches is None:
            if hints is not None and bool(hints[:, 2].any()):
                raise ValueError("this network takes no hints (its architecture has no -hints)")
            return None
        if hints is None:
            return no_hints(f4.shape[0], f4.shape[2], f4.shape[3], f4.device)
        return propagate(hints.float(), lightness.float()).to(f4.dtype)

    def with_hints(self, scale: int, x: Tensor, dense: Tensor | None) -> Tensor:
        """A decoder scale's output plus its hint branch's reading of the dense hint planes
        averaged to its size."""
        if self.hint_branches is None or dense is None:
            return x
        size = (int(x.shape[2]), int(x.shape[3]))
        branch = self.hint_branches[scale]
        if not torch.is_grad_enabled() and not bool(dense[:, 2].any()):
            return x + self.branch_of_nothing(scale, size, x)  # the archive's usual case
        return x + branch(F.adaptive_avg_pool2d(dense, size))

    def branch_of_nothing(self, scale: int, size: tuple[int, int], like: Tensor) -> Tensor:
        """What a hint branch reads from no hints at all, (1, C, h, w): the same for every
        image, so made once per size (and weights: keyed by their version counters, which
        `load_state_dict` and optimisers bump) instead of on every batch."""
        branch = self.hint_branches[scale]  # type: ignore[index]
        versions = tuple(p._version for p in branch.parameters())
        key = (scale, size, like.device, like.dtype, versions)
        cached = self._nothing.get(key)
        if cached is None:
            cached = branch(torch.zeros(1, 3, *size, device=like.device, dtype=like.dtype))
            self._nothing = {k: v for k, v in self._nothing.items() if k[:4] != key[:4]}
            self._nothing[key] = cached
        return cached


def hint_branch(channels: int, width: int = 32) -> nn.Sequential:
    """Hint planes -> a decoder scale's channels: two 3x3 convs (a 5-cell reach at each scale,
    so a hint at 1/32 speaks for a wide region and at 1/4 for its neighbourhood); the last
    starts at zero (the net starts as its automatic self)."""
    last = nn.Conv2d(width, channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    assert last.bias is not None
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(HINT_CHANNELS, width, 3, padding=1), nn.ReLU(True), last)


def upsample(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


ECCV16_WIDTHS: dict[str, float] = {"eccv16": 1.0, "small": 0.25}
LITE_ARCHITECTURES: dict[str, tuple[str, str]] = {  # name -> (encoder, decoder)
    "lite0": ("lite0", "context"),
    "lite0-plain": ("lite0", "plain"),
    "lite2": ("lite2", "context"),
    "lite2-plain": ("lite2", "plain"),
    "lite2-slim": ("lite2", "slim"),
}
HINTS_SUFFIX = "-hints"
HINT_ARCHITECTURES = tuple(name + HINTS_SUFFIX for name in LITE_ARCHITECTURES)
ARCHITECTURES = (*ECCV16_WIDTHS, *LITE_ARCHITECTURES, *HINT_ARCHITECTURES)


def takes_hints(arch: str) -> bool:
    return arch.endswith(HINTS_SUFFIX)


def automatic_arch(arch: str) -> str:
    """The architecture without its hint input (a hint-aware net is initialised from it)."""
    return arch.removesuffix(HINTS_SUFFIX)


def make_net(arch: str, centers: Tensor) -> nn.Module:
    """The network ARCH over the ab bins CENTERS (Q, 2) (a hint-aware net reads them)."""
    num_bins = centers.shape[0]
    if automatic_arch(arch) in LITE_ARCHITECTURES:
        encoder, decoder = LITE_ARCHITECTURES[automatic_arch(arch)]
        hinted = centers if takes_hints(arch) else None
        return LiteColorNet(num_bins, encoder, decoder, hint_centers=hinted)
    if arch not in ECCV16_WIDTHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {list(ARCHITECTURES)}")
    return ECCV16Net(num_bins, width=ECCV16_WIDTHS[arch])

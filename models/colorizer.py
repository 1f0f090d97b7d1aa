"""`Colorizer`: a network plus everything needed to use it (bins, prior, temperature, scaling)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.bins import gamut_bin_centers
from models.decode import DEFAULT_TEMPERATURE, annealed_mean_from_logits, uncertainty
from models.hints import honoured, reach
from models.nets import make_net, takes_hints
from models.targets import rebalance_weights


class Colorizer(nn.Module):
    """Calling it on L in [0, 100], (N, 1, H, W), returns bin probabilities (N, Q, H/4, W/4).

    Buffers (saved with the weights): `centers` (Q, 2) ab bin centres, `prior` (Q,) the smoothed
    empirical bin distribution of the training set (uniform until trained).
    """

    centers: Tensor
    prior: Tensor

    def __init__(
        self,
        arch: str,
        centers: Tensor,
        prior: Tensor | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        l_center: float = 50.0,
        l_scale: float = 100.0,
        working_size: int = 256,
        flip_average: bool = False,
        chroma_gain: float = 1.0,
        card: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        q = centers.shape[0]
        self.arch = arch
        self.register_buffer("centers", centers.to(torch.float32).clone())
        self.net = make_net(arch, self.centers)
        uniform = torch.full((q,), 1.0 / q)
        self.register_buffer(
            "prior", (uniform if prior is None else prior).to(torch.float32).clone()
        )
        self.temperature = temperature
        self.l_center = l_center
        self.l_scale = l_scale
        self.working_size = working_size
        self.flip_average = flip_average
        # the annealed mean's ab scaled by this: the mean of a distribution is paler than its
        # colours, a gain chosen on held-out folds (flows/crossval.py) gives the chroma back
        self.chroma_gain = chroma_gain
        self.card: dict[str, Any] = dict(card or {})

    @property
    def num_bins(self) -> int:
        return int(self.centers.shape[0])

    @property
    def device(self) -> torch.device:
        return self.centers.device

    @property
    def takes_hints(self) -> bool:
        """A hint-aware model (architecture `...-hints`): `logits` takes hint planes."""
        return takes_hints(self.arch)

    def logits(
        self, lightness: Tensor, hints: Tensor | None = None, automatic: Tensor | None = None
    ) -> Tensor:
        """Logits over the bins; with `flip_average`, the mean of the image's and its mirror's
        (test-time augmentation: twice the forward cost). `hints`: (N, 3, h, w) planes on the
        output grid (models/hints.py), for a hint-aware model only; None: no hints.

        With hints, an image's logits are its automatic ones where no hint reaches
        (`hints.reach`) and the hinted net's near its hints: a second forward, for the hinted
        images of the batch only. `automatic`: the batch's automatic logits when another
        runtime made them (the int8 twin), instead of the network's own."""
        if hints is not None and not self.takes_hints:
            raise ValueError(
                f"this {self.arch} model takes no colour hints: use a hint-aware model "
                "(architecture ending in -hints)"
            )
        x = (lightness - self.l_center) / self.l_scale
        if automatic is None:
            automatic = self.net_logits(x)
        if hints is None:
            return automatic
        hinted = torch.nonzero(hints[:, 2].flatten(1).any(1))[:, 0]
        if hinted.numel() == 0:
            return automatic
        x, hints = x[hinted], hints[hinted]
        near = reach(hints, x).to(automatic.dtype)
        out = automatic.clone()
        out[hinted] = automatic[hinted] + near * (self.net_logits(x, hints) - automatic[hinted])
        return out

    def net_logits(self, x: Tensor, hints: Tensor | None = None) -> Tensor:
        """The network on centred L (with hint planes for a hint-aware one), mirrored and
        averaged with `flip_average`."""
        if not self.takes_hints:
            if not self.flip_average:
                return self.net(x)
            return (self.net(x) + self.net(x.flip(3)).flip(3)) / 2
        if not self.flip_average:
            return self.net(x, hints)
        mirrored = None if hints is None else hints.flip(3)
        return (self.net(x, hints) + self.net(x.flip(3), mirrored).flip(3)) / 2

    def forward(self, lightness: Tensor, hints: Tensor | None = None) -> Tensor:
        return torch.softmax(self.logits(lightness, hints), dim=1)

    def predict_ab(self, lightness: Tensor, temperature: float | None = None) -> Tensor:
        """L (N, 1, H, W) -> annealed-mean ab at 1/4 resolution, (N, 2, H/4, W/4)."""
        return self.predict(lightness, temperature)[0]

    def predict(
        self, lightness: Tensor, temperature: float | None = None, hints: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """`predict_ab` and, from the same forward, each image's uncertainty (N,) in [0, 1]."""
        return self.decode(self.logits(lightness, hints), lightness, temperature)

    def decode(
        self, logits: Tensor, lightness: Tensor, temperature: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits (N, Q, h, w) of the input L (N, 1, H, W) -> annealed-mean ab (N, 2, h, w)
        times the chroma gain, and uncertainty (N,)."""
        t = self.temperature if temperature is None else temperature
        ab = annealed_mean_from_logits(logits, self.centers, t)
        return self.with_gain(ab), uncertainty(logits, lightness, self.centers, t)

    def with_hints(self, ab: Tensor, hints: Tensor | None, lightness: Tensor) -> Tensor:
        """The decoded ab (after the gain) honouring the hint planes, if any
        (`hints.honoured`; `lightness` the network's input L, 0-100)."""
        if hints is None or not bool(hints[:, 2].any()):
            return ab
        return honoured(ab, hints, (lightness - self.l_center) / self.l_scale)

    def with_gain(self, ab: Tensor) -> Tensor:
        """The decoded ab times the chroma gain (every decoding path ends here)."""
        return ab * self.chroma_gain if self.chroma_gain != 1.0 else ab

    def rebalance_weights(self, lam: float = 0.5) -> Tensor:
        return rebalance_weights(self.prior, lam)

    def config(self) -> dict[str, Any]:
        """Everything `build` needs to make this module again (centres and prior are buffers)."""
        return {
            "arch": self.arch,
            "num_bins": self.num_bins,
            "temperature": self.temperature,
            "l_center": self.l_center,
            "l_scale": self.l_scale,
            "working_size": self.working_size,
            "flip_average": self.flip_average,
            "chroma_gain": self.chroma_gain,
        }


def build(arch: str = "small", **options: Any) -> Colorizer:
    """An untrained Colorizer. `arch` is "eccv16" (the paper's net) or "small" (quarter width).

    Options: centers (Q, 2) (default: our sRGB-gamut grid-10 bins), prior, temperature,
    l_center, l_scale, working_size, flip_average, chroma_gain, card.
    """
    centers = options.pop("centers", None)
    if centers is None:
        centers = gamut_bin_centers()
    return Colorizer(arch, torch.as_tensor(centers, dtype=torch.float32), **options)

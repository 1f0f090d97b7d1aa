"""Annealed-mean decoding of per-pixel bin distributions into ab (the paper's eq. 5), and the
per-image uncertainty read from the same distributions and the input's lightness."""

from __future__ import annotations

import torch

DEFAULT_TEMPERATURE = 0.38  # the Caffe deploy net scales logits by 2.606 = 1 / 0.38


def annealed_mean(
    probs: torch.Tensor, centers: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """H(Z) = E[f_T(Z)] with f_T(z) = exp(log z / T) / sum_q exp(log z_q / T).

    probs (N, Q, h, w), summing to 1 over Q; centers (Q, 2) -> ab (N, 2, h, w).
    T = 1 is the mean, T -> 0 the mode. Computed as a softmax of log z / T, which is stable
    for small T (no z ** (1 / T) underflow).
    """
    log_probs = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    return annealed_mean_from_logits(log_probs, centers, temperature)


def annealed_mean_from_logits(
    logits: torch.Tensor, centers: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """The same from unnormalised logits: softmax(logits) then annealing is softmax(logits / T)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (0.38 is the paper's), got {temperature}")
    annealed = torch.softmax(logits / temperature, dim=1)
    return torch.einsum("nqhw,qc->nchw", annealed, centers.to(annealed))


def uncertainty(
    logits: torch.Tensor,
    lightness: torch.Tensor,
    centers: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """Per image, (N,), in [0, 1]: the colour at stake. Per pixel, the chroma the annealed
    distribution expects (sum_q softmax(logits / T)_q |c_q|), weighted by how much colour its
    lightness allows (the tent 4 L (100 - L) / 100^2: none at black or white, most at mid
    gray; L (N, 1, H, W), the network's input, averaged down to the logits' size); the mean
    over pixels, divided by the largest bin chroma.

    Why not the entropy: on photos from sources a model never saw, an image's ab error is
    mostly how colourful it really is, and the entropy of Z ranks it at 0.09 (Spearman, 5
    groups of held-out sources); this ranks it at 0.39 (0.43 pooled; docs/method.md).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (0.38 is the paper's), got {temperature}")
    chroma = torch.linalg.vector_norm(centers.to(logits), dim=1)  # (Q,)
    expected = torch.einsum("nqhw,q->nhw", torch.softmax(logits / temperature, dim=1), chroma)
    at_stake = expected * lightness_tent(lightness, (logits.shape[-2], logits.shape[-1]))
    return at_stake.flatten(1).mean(dim=1) / chroma.max()


def lightness_tent(lightness: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """L (N, 1, H, W) -> (N, h, w): 4 L (100 - L) / 100^2 of L averaged down to SIZE, the share
    of the widest chroma the gamut allows at that lightness, roughly (0 at L 0 and 100)."""
    small = torch.nn.functional.adaptive_avg_pool2d(lightness.float(), size)[:, 0]
    small = small.clamp(0.0, 100.0)
    return 4.0 * small * (100.0 - small) / 1e4

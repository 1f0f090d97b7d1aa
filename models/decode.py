"""Annealed-mean decoding of per-pixel bin distributions into ab (the paper's eq. 5)."""

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

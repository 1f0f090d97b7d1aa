"""Training targets and loss: soft-encoding, the smoothed empirical prior, class rebalancing.

Shapes: ab (N, 2, h, w) at the output resolution (1/4 of the input); centers (Q, 2);
distributions (N, Q, h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.bins import nearest_bin, squared_distances


def soft_encode(
    ab: torch.Tensor, centers: torch.Tensor, k: int = 5, sigma: float = 5.0
) -> torch.Tensor:
    """Spread each pixel's true ab over its k nearest bins by a Gaussian kernel (sigma: ab units).

    The paper uses k = 5, the released training code k = 10; both with sigma = 5.
    """
    dist2 = squared_distances(ab, centers)
    near_d2, near_idx = dist2.topk(k, dim=1, largest=False)
    weights = torch.softmax(-near_d2 / (2.0 * sigma**2), dim=1)  # normalised Gaussian
    return torch.zeros_like(dist2).scatter_(1, near_idx, weights)


def colourful_images(ab: torch.Tensor, threshold: float = 5.0) -> torch.Tensor:
    """(N,) bool: True where any pixel has |a| or |b| above `threshold`; gray images get no loss."""
    return (ab.abs() > threshold).flatten(1).any(dim=1)


def bin_histogram(ab: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Counts of pixels per nearest bin, (Q,) float64: the raw statistic for the prior."""
    idx = nearest_bin(ab, centers).flatten()
    return torch.bincount(idx, minlength=centers.shape[0]).to(torch.float64)


def smoothed_prior(counts: torch.Tensor, centers: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Empirical bin distribution p~ from counts, smoothed by a Gaussian over ab (sigma: ab units).

    Each bin's mass is spread over bins by the kernel (rows normalised), so the total stays 1.
    """
    p = counts.to(torch.float64) / counts.sum().clamp_min(1)
    c = centers.to(torch.float64)
    kernel = torch.exp(-(torch.cdist(c, c) ** 2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    smoothed = p @ kernel
    return (smoothed / smoothed.sum()).to(torch.float32)


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """w ~ ((1 - lam) p~ + lam / Q)^-1, normalised so that E_p~[w] = 1."""
    q = prior.shape[0]
    w = 1.0 / ((1.0 - lam) * prior.to(torch.float64) + lam / q)
    w = w / (prior.to(torch.float64) * w).sum()
    return w.to(torch.float32)


def rebalanced_cross_entropy(
    logits: torch.Tensor,
    ab: torch.Tensor,
    centers: torch.Tensor,
    weights: torch.Tensor,
    k: int = 5,
    sigma: float = 5.0,
) -> torch.Tensor:
    """The paper's loss (eq. 2): multinomial cross-entropy against soft-encoded targets, each
    pixel weighted by w(q*) of its nearest bin; images with no colour weigh 0. Mean over pixels.
    """
    target = soft_encode(ab, centers, k=k, sigma=sigma)
    per_pixel = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)  # (N, h, w)
    pixel_weight = weights.to(logits)[target.argmax(dim=1)]  # argmax of the target = nearest bin
    pixel_weight = pixel_weight * colourful_images(ab).to(logits)[:, None, None]
    return (per_pixel * pixel_weight).mean()

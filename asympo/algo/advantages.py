"""Group-relative advantages (docs/algorithm.md) and GPG's scaled variant.

Rewards arrive as a [B, G] tensor: B prompts, G responses each.
"""

from __future__ import annotations

import torch
from torch import Tensor

STD_EPS = 1e-6
ADV_NORMS = ("std", "none")


def _check_rewards(rewards: Tensor) -> Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [B, G], got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    return rewards.float()


def group_advantages(rewards: Tensor, norm: str = "std") -> Tensor:
    """A_g = r_g − mean_j r_j, divided by (std_j r_j + 1e-6) when norm == "std"; zero-sum in every group."""
    if norm not in ADV_NORMS:
        raise ValueError(f"norm must be one of {ADV_NORMS}, got {norm!r}")
    r = _check_rewards(rewards)
    A = r - r.mean(dim=1, keepdim=True)
    if norm == "std" and r.shape[1] > 1:
        # Sample std (Bessel-corrected), as torch.std and the common GRPO implementations use.
        A = A / (r.std(dim=1, keepdim=True) + STD_EPS)
    return A


def gpg_advantages(rewards: Tensor) -> Tensor:
    """GPG (arXiv 2504.02546): A_g = κ·(r_g − mean_j r_j), κ = N / max(1, #responses with r ≠ 0), no std."""
    r = _check_rewards(rewards)
    N = r.numel()
    kappa = N / max(1, int((r != 0).sum()))
    return kappa * (r - r.mean(dim=1, keepdim=True))

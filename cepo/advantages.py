"""Group-relative advantages (docs/algorithms.md §1).

Rollouts are laid out group-major: the ``G`` samples of prompt ``p`` sit at rows
``p*G .. p*G+G-1``. Every function here is pure and works on detached tensors.
"""

from __future__ import annotations

from typing import Literal

import torch

EPS = 1e-6


def group_advantages(rewards: torch.Tensor, group_size: int, scale: Literal["std", "none"] = "std") -> torch.Tensor:
    """GRPO advantages ``A_i = (r_i - mean_g r) / (std_g r + 1e-6)``.

    Args:
        rewards: ``[N]`` scalar rewards, ``N = P * group_size``, group-major.
        group_size: rollouts per prompt ``G`` (at least 2).
        scale: ``"std"`` divides by the unbiased group std (GRPO); ``"none"`` does not (Dr.GRPO).

    Returns:
        ``[N]`` float advantages; a group with equal rewards gets exactly 0.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [P*G] with G={group_size}, got shape {tuple(rewards.shape)}")
    r = rewards.detach().float().view(-1, group_size)  # [P, G]
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (r.std(dim=1, unbiased=True, keepdim=True) + EPS)
    elif scale != "none":
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    return centred.view(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[P]`` bool: groups whose rewards are all equal (they carry no GRPO signal)."""
    r = rewards.detach().view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) == 0

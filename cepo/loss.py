"""The clipped policy-gradient surrogate (docs/algorithms.md §1).

Pure functions over ``[N, T]`` tensors. ``mask`` marks response tokens. The caller picks
the normaliser so that gradient accumulation over micro-batches reproduces the gradient
of the whole optimizer mini-batch (see :func:`aggregate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class SurrogateStats:
    """Diagnostics of one surrogate evaluation (all detached scalars)."""

    clip_frac: torch.Tensor
    """Fraction of response tokens where the ratio clip was active."""
    dual_clip_frac: torch.Tensor
    """Fraction of response tokens where the dual clip bound was active."""
    ratio_mean: torch.Tensor


def clipped_surrogate(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    token_adv: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    c_dual: float | None = 3.0,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SurrogateStats]:
    """Per-token loss ``L_t = -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A)`` with dual clip.

    Args:
        logp_new: ``[N, T]`` log-probs under the current policy (carries grad).
        logp_old: ``[N, T]`` log-probs of the policy that sampled (no grad).
        token_adv: ``[N, T]`` token advantages ``Â_t`` (no grad).
        mask: ``[N, T]`` bool, response tokens.
        eps_low, eps_high: ratio clip bounds.
        c_dual: dual-clip constant for negative advantages (``None`` disables it).
        is_weight: optional ``[N, T]`` truncated importance weight (engine/trainer
            mismatch correction) multiplying the per-token loss.

    Returns:
        ``([N, T]`` per-token loss, zero off the mask, and :class:`SurrogateStats`).
    """
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = token_adv.detach()
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)  # [N, T]
    dual_active = torch.zeros_like(mask)
    if c_dual is not None:
        dual_bound = -c_dual * adv
        dual_active = (adv < 0) & (loss > dual_bound)
        loss = torch.where(adv < 0, torch.minimum(loss, dual_bound), loss)
    if is_weight is not None:
        loss = loss * is_weight.detach()
    loss = torch.where(mask, loss, torch.zeros_like(loss))
    with torch.no_grad():
        m = mask.float()
        n = m.sum().clamp(min=1)
        clip_active = clipped < unclipped  # the clipped branch is the one the min picks
        stats = SurrogateStats(
            clip_frac=(clip_active.float() * m).sum() / n,
            dual_clip_frac=(dual_active.float() * m).sum() / n,
            ratio_mean=(ratio * m).sum() / n,
        )
    return loss, stats


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1``."""
    d = ref_logp.detach() - logp
    return torch.exp(d) - d - 1.0


def aggregate(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: Literal["token_mean", "seq_mean"],
    normaliser: float,
) -> torch.Tensor:
    """Sum a micro-batch's per-token loss and divide by the *mini-batch* normaliser.

    Args:
        token_loss: ``[N, T]`` per-token loss, zero off the mask.
        mask: ``[N, T]`` bool.
        mode: ``"token_mean"`` (the normaliser counts valid tokens of the whole optimizer
            mini-batch) or ``"seq_mean"`` (each sequence is averaged over its own tokens,
            the normaliser counts sequences of the mini-batch).
        normaliser: the mini-batch total (tokens or sequences); summing the returned values
            over all micro-batches gives the mini-batch mean, so accumulation is exact.
    """
    if mode == "token_mean":
        return token_loss.sum() / normaliser
    if mode == "seq_mean":
        per_seq = token_loss.sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / normaliser
    raise ValueError(f"loss aggregation must be 'token_mean' or 'seq_mean', got {mode!r}")

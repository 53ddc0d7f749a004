"""Per-token divergences between the student's and a teacher's next-token distributions.

Pure functions over ``[..., V]`` logits or log-probs (docs/algorithms.md §4). The generalized JSD
with coefficient ``b`` mixes ``M = (1-b) p_S + b p_T`` and returns
``b KL(p_T || M) + (1-b) KL(p_S || M)``; at the end points, where that expression vanishes,
the conventional limits are used instead: ``b = 0`` is the forward KL ``KL(p_T || p_S)`` and
``b = 1`` the reverse KL ``KL(p_S || p_T)`` (as in the OPSD/SDPO code).
"""

from __future__ import annotations

import math

import torch


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last dim, from normalised log-probs (``0 log 0 = 0``)."""
    p = p_logp.exp()
    return torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p)).sum(-1)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, b: float = 0.5) -> torch.Tensor:
    """``[...]`` generalized JSD between two normalised log-prob tensors ``[..., V]``.

    Args:
        student_logp: ``log p_S`` (may carry grad).
        teacher_logp: ``log p_T`` (the caller detaches it).
        b: mixing coefficient in [0, 1]; 0 gives ``KL(p_T || p_S)``, 1 gives ``KL(p_S || p_T)``.
    """
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"divergence coefficient must be in [0, 1], got {b}")
    if b == 0.0:
        return kl(teacher_logp, student_logp)
    if b == 1.0:
        return kl(student_logp, teacher_logp)
    mix = torch.logsumexp(torch.stack([student_logp + math.log(1.0 - b), teacher_logp + math.log(b)]), dim=0)
    return b * kl(teacher_logp, mix) + (1.0 - b) * kl(student_logp, mix)


def full_vocab_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, b: float = 0.5) -> torch.Tensor:
    """``[...]`` generalized JSD over the full vocabulary (OPSD), from logits ``[..., V]``."""
    return generalized_jsd(
        torch.log_softmax(student_logits.float(), -1), torch.log_softmax(teacher_logits.float(), -1), b
    )


def with_tail(topk_logp: torch.Tensor) -> torch.Tensor:
    """Append one bucket holding the mass outside a top-K support: ``[..., K] -> [..., K+1]``."""
    captured = torch.logsumexp(topk_logp, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([topk_logp, torch.log(-torch.expm1(captured))], dim=-1)


def topk_tail_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int, alpha: float = 0.5
) -> torch.Tensor:
    """``[...]`` generalized JSD on the student's top-``k`` tokens plus a tail bucket (SDPO).

    Both distributions are read at the student's top-``k`` token ids (chosen without grad) and
    completed by one bucket for the remaining mass, so that with ``k`` covering the vocabulary
    the result equals :func:`full_vocab_jsd` up to the tail bucket's ``1e-7`` floor.
    """
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    student_logp = torch.log_softmax(student_logits.float(), -1)
    teacher_logp = torch.log_softmax(teacher_logits.float(), -1)
    k = min(k, student_logp.shape[-1])
    index = student_logp.detach().topk(k, dim=-1).indices
    s = with_tail(student_logp.gather(-1, index))
    t = with_tail(teacher_logp.gather(-1, index))
    return generalized_jsd(s, t, alpha)

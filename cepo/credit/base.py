"""The credit-assignment seam: sequence advantages in, token advantages out.

A :class:`CreditAssigner` is a small callable chosen in YAML by ``class_path`` (or by short
name on the command line). It sees only detached tensors (:class:`CreditInputs`) and returns
``[N, T]`` token advantages that the clipped surrogate of ``cepo.loss`` consumes. Adding a
strategy is a new file, an import in ``cepo/credit/__init__.py``, a YAML file and a test: no
edit to the module, the loss or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CreditInputs:
    """Everything a credit rule may read, all ``[N, T]`` aligned with response tokens.

    Attributes:
        advantages: ``[N]`` float, sequence-level GRPO advantages.
        mask: ``[N, T]`` bool, response tokens.
        student_logprobs: ``[N, T]`` ``log P_S(y_t)``. During training, rows with ``A_i = 0`` may
            hold zeros (their token advantages are zero whatever the rule), and rules that do not
            set ``needs_student`` get the student log-probs only where the teacher pass needs them.
        pos_logprobs: ``[N, T]`` ``log P_T+(y_t)`` (teacher shown the verified answer), or None.
        neg_logprobs: ``[N, T]`` ``log P_T-(y_t)`` (teacher shown a wrong answer), or None.
            Rows with no wrong answer in their group already hold the student log-probs
            (``P_T- := P_S``).
        rewards: ``[N]`` scalar rewards, or None (for logging and reward-aware rules).
        has_negative: ``[N]`` bool, rows whose ``neg_logprobs`` come from a real wrong-answer
            teacher (False where ``P_T- := P_S``), or None.
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    student_logprobs: torch.Tensor
    pos_logprobs: torch.Tensor | None = None
    neg_logprobs: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    has_negative: torch.Tensor | None = None


@dataclass
class CreditOutput:
    """Token advantages plus the evidence behind them, for logging (all detached).

    Attributes:
        token_advantages: ``[N, T]`` ``Â_t``, 0 off the mask.
        delta: ``[N, T]`` evidence ``Delta_t`` (0 for rules without one).
        weight: ``[N, T]`` unclipped weight ``w_t`` (1 for rules without one).
        clipped: ``[N, T]`` bool, tokens whose weight hit the clip bound.
    """

    token_advantages: torch.Tensor
    delta: torch.Tensor
    weight: torch.Tensor
    clipped: torch.Tensor


class CreditAssigner:
    """Base class: maps :class:`CreditInputs` to ``[N, T]`` token advantages.

    Subclasses implement :meth:`assign`. ``beta`` is the mixing coefficient (the paper's
    lambda) as a plain attribute the schedule callback sets; rules without one keep 0.
    """

    beta: float = 0.0
    needs_pos: bool = False
    """Whether the rule reads ``pos_logprobs`` (the module runs the ``c+`` teacher pass)."""
    needs_neg: bool = False
    """Whether the rule reads ``neg_logprobs`` (the module runs the ``c-`` teacher pass)."""
    needs_student: bool = False
    """Whether the rule reads ``student_logprobs`` on every row with a non-zero advantage."""

    def needs_teacher(self) -> bool:
        """True when a teacher pass would change the result (never when ``beta == 0``)."""
        return (self.needs_pos or self.needs_neg) and self.beta != 0.0

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, inputs: CreditInputs) -> torch.Tensor:
        """``[N, T]`` token advantages, 0 where ``mask`` is False, no grad."""
        return self.assign(inputs).token_advantages

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def broadcast_advantages(inputs: CreditInputs) -> torch.Tensor:
    """``[N, T]``: ``A_i`` on every response token, 0 elsewhere."""
    adv = inputs.advantages.detach().float()[:, None].expand_as(inputs.mask)
    return torch.where(inputs.mask, adv, torch.zeros_like(adv))


def uniform_output(inputs: CreditInputs) -> CreditOutput:
    """GRPO's credit with neutral evidence: ``Â_t = A_i``, ``Delta = 0``, ``w = 1``."""
    token_adv = broadcast_advantages(inputs)
    zeros = torch.zeros_like(token_adv)
    return CreditOutput(token_adv, zeros, torch.ones_like(token_adv), zeros.bool())


def evidence_weighted(inputs: CreditInputs, delta: torch.Tensor, clip: float, beta: float) -> CreditOutput:
    """The shared RLSD/CEPO rule ``Â_t = A_i [(1-beta) + beta clip(exp(sign(A_i) Delta_t), 1±clip)]``.

    Args:
        inputs: the batch; ``advantages`` gives ``A_i`` and its sign.
        delta: ``[N, T]`` evidence ``Delta_t`` (already detached).
        clip: ``eps_w``; ``float("inf")`` leaves the weight unbounded.
        beta: mixing coefficient in [0, 1].
    """
    mask = inputs.mask
    adv = inputs.advantages.detach().float()[:, None]  # [N, 1]
    delta = torch.where(mask, delta.detach().float(), torch.zeros_like(delta, dtype=torch.float))
    weight = torch.exp(torch.sign(adv) * delta)  # [N, T], > 0
    lo, hi = 1.0 - clip, 1.0 + clip
    clipped_w = weight.clamp(min=max(lo, 0.0), max=hi)
    clipped = (weight < lo) | (weight > hi)
    token_adv = adv * ((1.0 - beta) + beta * clipped_w)
    token_adv = torch.where(mask, token_adv, torch.zeros_like(token_adv))
    return CreditOutput(token_adv, delta, weight, clipped & mask)


def check_clip_beta(clip: float, beta: float) -> None:
    """Reject settings that break direction anchoring (ALGORITHMS.md §2)."""
    if not clip > 0:
        raise ValueError(f"credit clip (eps_w) must be > 0, got {clip}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"credit beta must be in [0, 1], got {beta}")

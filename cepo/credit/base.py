"""The credit-assignment seam: sequence advantages in, token advantages out.

A :class:`CreditAssigner` is a small callable chosen in YAML by ``class_path`` (or by short
name on the command line). It declares the evidence it reads (:attr:`CreditAssigner.reads`:
student log-probs, policy entropy, the ``c+`` and ``c-`` teachers), sees only detached tensors
(:class:`CreditInputs`) and returns ``[N, T]`` token advantages that the clipped surrogate of
``cepo.loss`` consumes, plus what the token-weight logger shows (:class:`CreditOutput`). Adding
a strategy is a new file in ``cepo/credit/``, a YAML file and a test: no edit to the module, the
loss, the CLI or the teacher code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

STUDENT = "student"
"""Evidence: ``[N, T]`` ``log P_S(y_t)``, the sampling policy's log-probs of its own tokens."""
ENTROPY = "entropy"
"""Evidence: ``[N, T]`` entropy (nats) of the sampling policy's next-token distribution."""
POS = "pos"
"""Evidence: ``[N, T]`` ``log P_T+(y_t)``, the teacher shown the verified answer (``c+``)."""
NEG = "neg"
"""Evidence: ``[N, T]`` ``log P_T-(y_t)``, the teacher shown a wrong answer (``c-``)."""
EVIDENCE = (STUDENT, ENTROPY, POS, NEG)
"""The kinds of evidence with a field of their own in :class:`CreditInputs`; every kind a rule
may read is a provider registered in ``cepo.evidence`` (the others land in ``inputs.evidence``)."""


@dataclass
class CreditInputs:
    """Everything a credit rule may read, all ``[N, T]`` aligned with response tokens.

    Evidence is computed only for the rows with a non-zero advantage (the others get zero
    token advantages under every rule) and only for what the rule asked for (its
    :meth:`CreditAssigner.needs`); the rest is None or 0.

    Attributes:
        advantages: ``[N]`` float, sequence-level GRPO advantages.
        mask: ``[N, T]`` bool, response tokens.
        student_logprobs: ``[N, T]`` ``log P_S(y_t)`` (:data:`STUDENT`), or None.
        pos_logprobs: ``[N, T]`` ``log P_T+(y_t)`` (:data:`POS`), or None.
        neg_logprobs: ``[N, T]`` ``log P_T-(y_t)`` (:data:`NEG`), or None. Rows whose group has no
            usable wrong answer hold the student log-probs (``P_T- := P_S``).
        rewards: ``[N]`` scalar rewards, or None.
        has_negative: ``[N]`` bool, rows whose ``neg_logprobs`` come from a real wrong-answer
            teacher, or None.
        entropy: ``[N, T]`` policy entropy at each response position (:data:`ENTROPY`), or None.
        contexts: ``{group: (c+ prompt, c- prompt)}``, the teachers' full prompts (for display), or None.
        evidence: ``{name: [N, T]}`` the kinds of evidence without a field of their own (each
            provided by a ``cepo.evidence`` provider of that name), e.g. ``evidence["reference"]``.
    """

    advantages: torch.Tensor
    mask: torch.Tensor
    student_logprobs: torch.Tensor | None = None
    pos_logprobs: torch.Tensor | None = None
    neg_logprobs: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    has_negative: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    contexts: dict[int, tuple[str | None, str | None]] | None = None
    evidence: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class CreditOutput:
    """Token advantages plus what the token-weight logger shows of them (all detached).

    Attributes:
        token_advantages: ``[N, T]`` ``Â_t``, 0 off the mask.
        weight: ``[N, T]`` the per-token factor the rule applied, shown as each token's colour
            (None: nothing to show, e.g. GRPO or an evidence rule at beta 0).
        delta: ``[N, T]`` the evidence behind the weight (``Delta_t``, an entropy, ...), or None.
        clipped: ``[N, T]`` bool, tokens whose weight hit a bound, or None.
        legend: one sentence saying what ``weight`` and ``delta`` are (shown on the page).
        weight_range: ``(low, high)`` weights at which the colour saturates.
    """

    token_advantages: torch.Tensor
    weight: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    clipped: torch.Tensor | None = None
    legend: str = ""
    weight_range: tuple[float, float] = (0.0, 2.0)


class CreditAssigner:
    """Base class: maps :class:`CreditInputs` to ``[N, T]`` token advantages.

    Subclasses set :attr:`reads` and implement :meth:`assign`. The module provides each piece
    of evidence in :meth:`needs` before calling :meth:`assign`, whatever the rule is.
    """

    reads: frozenset[str] = frozenset()
    """The evidence this rule reads: names of providers registered in ``cepo.evidence`` (checked
    when the module is built: an unknown name is an error naming it)."""

    def needs(self) -> frozenset[str]:
        """The evidence the next :meth:`assign` call reads (default: all of :attr:`reads`).

        A rule whose current settings make some evidence irrelevant returns less, and the
        module skips those passes (an evidence rule at beta 0 needs nothing).
        """
        return self.reads

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, inputs: CreditInputs) -> torch.Tensor:
        """``[N, T]`` token advantages, 0 where ``mask`` is False, no grad."""
        return self.assign(inputs).token_advantages

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class MixedCredit(CreditAssigner):
    """A rule that mixes GRPO with a token weight through a coefficient ``beta`` (the paper's lambda).

    ``beta`` is a plain attribute that the beta schedule callback sets every step; only rules of
    this kind take part in the schedule. At ``beta == 0`` the rule is GRPO exactly and needs no
    evidence, so the module skips the teacher passes.
    """

    beta: float = 0.0

    def needs(self) -> frozenset[str]:
        return self.reads if self.beta != 0.0 else frozenset()


def broadcast_advantages(inputs: CreditInputs) -> torch.Tensor:
    """``[N, T]``: ``A_i`` on every response token, 0 elsewhere."""
    adv = inputs.advantages.detach().float()[:, None].expand_as(inputs.mask)
    return torch.where(inputs.mask, adv, torch.zeros_like(adv))


def uniform_output(inputs: CreditInputs) -> CreditOutput:
    """GRPO's credit: ``Â_t = A_i`` on every response token, nothing to show per token."""
    return CreditOutput(broadcast_advantages(inputs))


EVIDENCE_LEGEND = (
    "weight w = exp(sign(A) Delta), green above 1 (more credit or blame), red below 1 (less), "
    "saturated at the clip bounds; Delta = {delta}"
)


def evidence_weighted(
    inputs: CreditInputs, delta: torch.Tensor, clip: float, beta: float, legend: str = ""
) -> CreditOutput:
    """The shared RLSD/CEPO rule ``Â_t = A_i [(1-beta) + beta clip(exp(sign(A_i) Delta_t), 1±clip)]``.

    Args:
        inputs: the batch; ``advantages`` gives ``A_i`` and its sign.
        delta: ``[N, T]`` evidence ``Delta_t`` (already detached).
        clip: ``eps_w``; ``float("inf")`` leaves the weight unbounded.
        beta: mixing coefficient in [0, 1].
        legend: what ``Delta`` is, for the token-weight page.
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
    shown = (lo, hi) if clip != float("inf") else (0.0, 3.0)
    return CreditOutput(token_adv, weight, delta, clipped & mask, legend, shown)


def check_clip_beta(clip: float, beta: float) -> None:
    """Reject settings that break direction anchoring (docs/algorithms.md §2)."""
    if not clip > 0:
        raise ValueError(f"credit clip (eps_w) must be > 0, got {clip}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"credit beta must be in [0, 1], got {beta}")

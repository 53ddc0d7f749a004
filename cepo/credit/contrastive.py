"""Contrastive evidence credit (CEPO, docs/algorithms.md §3): ``Delta_t = log P_T+ - log P_T-``."""

from __future__ import annotations

from cepo.credit.base import (
    EVIDENCE_LEGEND,
    NEG,
    POS,
    CreditInputs,
    CreditOutput,
    MixedCredit,
    check_clip_beta,
    evidence_weighted,
    uniform_output,
)


class Contrastive(MixedCredit):
    """CEPO: credit by how much a token favours the right answer over a wrong one.

    The student prior cancels. Where a group has no wrong answer, ``neg_logprobs`` holds
    the student log-probs and the rule is RLSD exactly.

    Args:
        clip: weight clip bound ``eps_w`` (paper default 0.5; ``float("inf")`` unbounded).
        beta: mixing coefficient (the paper's lambda); 0 is GRPO exactly. The beta schedule
            callback sets it every step.
    """

    reads = frozenset({POS, NEG})

    def __init__(self, clip: float = 0.5, beta: float = 0.5) -> None:
        check_clip_beta(clip, beta)
        self.clip = float(clip)
        self.beta = float(beta)

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        if self.beta == 0.0:  # GRPO exactly; the module skips the teacher passes then
            return uniform_output(inputs)
        if inputs.pos_logprobs is None or inputs.neg_logprobs is None:
            raise ValueError("Contrastive needs pos_logprobs and neg_logprobs (teacher passes)")
        delta = inputs.pos_logprobs - inputs.neg_logprobs
        legend = EVIDENCE_LEGEND.format(delta="log P_T+(y_t) - log P_T-(y_t)")
        return evidence_weighted(inputs, delta, self.clip, self.beta, legend)

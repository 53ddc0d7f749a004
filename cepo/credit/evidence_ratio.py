"""Evidence-ratio credit (RLSD, docs/algorithms.md §2): ``Delta_t = log P_T+ - log P_S``."""

from __future__ import annotations

from cepo.credit.base import (
    EVIDENCE_LEGEND,
    POS,
    STUDENT,
    CreditInputs,
    CreditOutput,
    MixedCredit,
    check_clip_beta,
    evidence_weighted,
    uniform_output,
)


class EvidenceRatio(MixedCredit):
    """RLSD: tokens that the answer-conditioned teacher likes more than the student get more credit.

    Args:
        clip: weight clip bound ``eps_w``; the weight lives in ``[1-clip, 1+clip]``.
            ``float("inf")`` leaves it unbounded.
        beta: mixing coefficient (the paper's lambda); 0 is GRPO exactly. The beta schedule
            callback sets it every step.
    """

    reads = frozenset({POS, STUDENT})

    def __init__(self, clip: float = 0.5, beta: float = 0.5) -> None:
        check_clip_beta(clip, beta)
        self.clip = float(clip)
        self.beta = float(beta)

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        if self.beta == 0.0:  # GRPO exactly; the module skips the teacher passes then
            return uniform_output(inputs)
        return evidence_weighted(
            inputs, self.delta(inputs), self.clip, self.beta, EVIDENCE_LEGEND.format(delta=self.shown)
        )

    shown = "log P_T+(y_t) - log P_S(y_t)"
    """What ``Delta`` is, on the token-weight page."""

    def delta(self, inputs: CreditInputs):
        """``[N, T]`` the evidence ``Delta_t`` (a subclass reading other evidence overrides this)."""
        if inputs.pos_logprobs is None or inputs.student_logprobs is None:
            raise ValueError("EvidenceRatio needs pos_logprobs and student_logprobs")
        return inputs.pos_logprobs - inputs.student_logprobs

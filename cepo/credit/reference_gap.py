"""Reference-gap credit: ``Delta_t = log P_ref(y_t) - log P_S(y_t)``, the initial policy against
the sampling one (an example of a rule reading evidence of a new kind, ``reference``).

A token the policy has drifted towards since the start (``P_S > P_ref``, ``Delta < 0``) gets less
credit on a correct rollout and less blame on a wrong one; a token it has drifted away from gets
more. It tempers the drift of the policy token by token, where the KL term tempers it by a
penalty; with ``beta = 0`` it is GRPO exactly.
"""

from __future__ import annotations

from cepo.credit.base import STUDENT, CreditInputs
from cepo.credit.evidence_ratio import EvidenceRatio

REFERENCE = "reference"  # provided by cepo/evidence/reference.py


class ReferenceGap(EvidenceRatio):
    """Tokens the initial policy likes more than the current one get more credit (or blame):
    RLSD's rule with the reference in the teacher's place.

    Args:
        clip: weight clip bound ``eps_w``; the weight lives in ``[1-clip, 1+clip]``.
        beta: mixing coefficient; 0 is GRPO exactly. The beta schedule callback sets it.
    """

    reads = frozenset({REFERENCE, STUDENT})
    shown = "log P_ref(y_t) - log P_S(y_t)"

    def delta(self, inputs: CreditInputs):
        if REFERENCE not in inputs.evidence or inputs.student_logprobs is None:
            raise ValueError("ReferenceGap needs the reference and student log-probs")
        return inputs.evidence[REFERENCE] - inputs.student_logprobs

"""The sampling policy's own evidence: ``student`` (``log P_S(y_t)``) and ``entropy``, one no-grad
pass for both (reusing the old log-probs when the step computed them)."""

from __future__ import annotations

from cepo.credit import ENTROPY, STUDENT
from cepo.evidence.registry import Provider, Source, register


class PolicyEvidence(Provider):
    def __call__(self, source: Source, needs: frozenset[str]) -> None:
        if ENTROPY in needs:
            lp, source.inputs.entropy = source.scorer.logprobs(source.policy, source.packed, source.rows, entropy=True)
            source.student = source.student if source.student is not None else lp
        elif source.student is None:
            source.student, _ = source.scorer.logprobs(source.policy, source.packed, source.rows)
        source.inputs.student_logprobs = source.student


register(PolicyEvidence(names=(STUDENT, ENTROPY), order=10))

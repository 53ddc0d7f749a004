"""The teachers' evidence: ``pos`` (``log P_T+(y_t)``, shown the verified answer) and ``neg``
(``log P_T-(y_t)``, shown a wrong one), scored in one planned set of passes; ``P_T- := P_S`` for
groups without a usable wrong answer."""

from __future__ import annotations

from cepo.credit import NEG, POS
from cepo.evidence.registry import Provider, Source, register


class TeacherEvidence(Provider):
    def __call__(self, source: Source, needs: frozenset[str]) -> None:
        inputs, rows = source.inputs, source.rows
        scores = source.teacher.score(source.batch, rows, POS in needs, NEG in needs, source.weights, source.scorer)
        inputs.pos_logprobs, inputs.contexts = scores.pos, scores.contexts
        if NEG in needs:
            # P_T- := P_S where a group has no usable wrong answer (RLSD exactly there)
            fallback = rows[~scores.has_negative[rows]]
            neg = scores.neg
            if fallback.numel():
                student = source.student
                if student is None:
                    student, _ = source.scorer.logprobs(source.policy, source.packed, fallback)
                neg[fallback] = student[fallback]
            inputs.neg_logprobs, inputs.has_negative = neg, scores.has_negative


register(TeacherEvidence(names=(POS, NEG), order=20))

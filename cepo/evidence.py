"""The evidence a credit rule asked for, computed once per step and nothing more.

:func:`gather` turns a rule's :meth:`~cepo.credit.CreditAssigner.needs` into
:class:`~cepo.credit.CreditInputs`: the sampling policy's log-probs and entropies (one no-grad
pass), the ``c+``/``c-`` teacher log-probs (one planned set of passes), and the ``P_T- := P_S``
fallback for groups without a usable wrong answer. Rows with a zero advantage get zero token
advantages under every rule, so no evidence is computed for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cepo.credit import ENTROPY, NEG, POS, STUDENT, CreditAssigner, CreditInputs, CreditOutput
from cepo.rollout.batch import RolloutBatch
from cepo.scoring import Scorer
from cepo.teacher import TeacherContexts, TeacherWeights


@dataclass
class CreditRecord:
    """One step's credit assignment, kept for callbacks (token-weight logging)."""

    batch: RolloutBatch
    inputs: CreditInputs
    output: CreditOutput
    credit: CreditAssigner


@torch.no_grad()
def gather(
    needs: frozenset[str],
    batch: RolloutBatch,
    advantages: torch.Tensor,
    policy: torch.nn.Module,
    scorer: Scorer,
    teacher: TeacherContexts,
    weights: TeacherWeights,
    old_logprobs: torch.Tensor | None = None,
) -> CreditInputs:
    """:class:`CreditInputs` holding the evidence in ``needs``.

    Args:
        needs: evidence names (``cepo.credit.EVIDENCE``).
        batch: the rollout batch.
        advantages: ``[N]`` sequence advantages.
        policy: the trained policy (its current weights sampled ``batch``).
        scorer: the micro-batched scoring loop.
        teacher: builds and scores the teacher contexts.
        weights: the teacher weights.
        old_logprobs: ``[N, T]`` the policy's log-probs on every row if already computed
            (reused as the student evidence).
    """
    inputs = CreditInputs(advantages=advantages, mask=batch.response_mask, rewards=batch.rewards)
    rows = torch.nonzero(advantages != 0).flatten()
    packed = batch.packed()
    student = old_logprobs
    if ENTROPY in needs:
        lp, inputs.entropy = scorer.logprobs(policy, packed, rows, entropy=True)
        student = student if student is not None else lp
    elif STUDENT in needs and student is None:
        student, _ = scorer.logprobs(policy, packed, rows)
    if POS in needs or NEG in needs:
        scores = teacher.score(batch, rows, POS in needs, NEG in needs, weights, scorer)
        inputs.pos_logprobs, inputs.contexts = scores.pos, scores.contexts
        if NEG in needs:
            # P_T- := P_S where a group has no usable wrong answer (RLSD exactly there)
            fallback = rows[~scores.has_negative[rows]]
            neg = scores.neg
            if fallback.numel():
                if student is None:
                    student, _ = scorer.logprobs(policy, packed, fallback)
                neg[fallback] = student[fallback]
            inputs.neg_logprobs, inputs.has_negative = neg, scores.has_negative
    if STUDENT in needs or ENTROPY in needs:
        inputs.student_logprobs = student
    return inputs

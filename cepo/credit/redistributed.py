"""Redistributed contrastive credit: CEPO's evidence decides how a rollout's GRPO credit is split
over its tokens, without a mixing coefficient and without changing the rollout's total credit."""

from __future__ import annotations

import torch

from cepo.credit.base import NEG, POS, CreditAssigner, CreditInputs, CreditOutput, check_clip_beta


class Redistributed(CreditAssigner):
    """Token weights from contrastive evidence, renormalised to mean 1 over each response.

    With ``Delta_t = log P_T+(y_t) - log P_T-(y_t)`` (CEPO's evidence; ``P_T- := P_S`` where the
    group has no usable wrong answer) and ``w_t = clip(exp(sign(A_i) Delta_t), 1 - clip, 1 + clip)``,
    each rollout's tokens get ``Â_t = A_i * w_t / mean_s(w_s)`` (mean over the rollout's response
    tokens). So ``sum_t Â_t = T_i A_i``, exactly GRPO's credit for the rollout, moved towards the
    tokens that favour the right answer over the wrong one (more blame to the tokens a wrong
    answer favours on failed rollouts). The weights are positive, so ``sign(Â_t) = sign(A_i)``;
    equal teachers give GRPO exactly. There is no beta: the teacher passes always run and the
    beta schedule leaves the rule alone.

    Args:
        clip: bound ``eps_w`` on the weight before renormalising (``float("inf")``: unbounded).
    """

    reads = frozenset({POS, NEG})

    def __init__(self, clip: float = 0.5) -> None:
        check_clip_beta(clip, 1.0)
        self.clip = float(clip)

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        if inputs.pos_logprobs is None or inputs.neg_logprobs is None:
            raise ValueError("Redistributed needs pos_logprobs and neg_logprobs (teacher passes)")
        mask = inputs.mask
        adv = inputs.advantages.detach().float()[:, None]  # [N, 1]
        zeros = torch.zeros(mask.shape, device=mask.device)
        delta = torch.where(mask, (inputs.pos_logprobs - inputs.neg_logprobs).detach().float(), zeros)
        raw = torch.exp(torch.sign(adv) * delta)  # [N, T]
        lo, hi = max(1.0 - self.clip, 0.0), 1.0 + self.clip
        weight = torch.where(mask, raw.clamp(min=lo, max=hi), zeros)
        # mean 1 over each response; a response whose weights are all 0 (clip >= 1) keeps GRPO's
        mean = weight.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        weight = torch.where(mean > 0, weight / mean.clamp(min=1e-12), mask.float())
        token_adv = torch.where(mask, adv * weight, zeros)
        shown = torch.where(mask, weight, torch.ones_like(weight))
        clipped = ((raw < lo) | (raw > hi)) & mask
        legend = (
            "weight w = clip(exp(sign(A) Delta)) / its mean over the response, green above 1 (more of the "
            "rollout's credit or blame), red below 1 (less); Delta = log P_T+(y_t) - log P_T-(y_t)"
        )
        return CreditOutput(token_adv, shown, delta, clipped, legend, (max(lo, 0.0), hi))

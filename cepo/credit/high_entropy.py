"""High-entropy token credit ("Beyond the 80/20 rule", Wang et al. 2025): the policy gradient
flows only through the *forking* tokens, the top fraction of tokens by the policy's entropy."""

from __future__ import annotations

import torch

from cepo.credit.base import ENTROPY, CreditAssigner, CreditInputs, CreditOutput, broadcast_advantages


class HighEntropy(CreditAssigner):
    """GRPO's advantage on the top ``top_fraction`` of tokens by entropy, 0 on the rest.

    The entropy is that of the sampling policy's next-token distribution at each response
    position (temperature-scaled, no grad). The threshold is the ``1 - top_fraction`` quantile
    (linear interpolation) of the entropies of the step's tokens that can carry a gradient:
    response tokens of rollouts with a non-zero advantage (under DDP, each rank's own). Tokens
    at or above it keep ``Â_t = A_i``; the others get 0, so they add nothing to the gradient,
    while the token-mean normaliser still counts them (as TRL's ``top_entropy_quantile``).
    No teacher pass and no mixing coefficient: the beta schedule leaves the rule alone.

    Args:
        top_fraction: the fraction of tokens kept (the paper: 0.2); 1 is GRPO exactly.
    """

    reads = frozenset({ENTROPY})

    def __init__(self, top_fraction: float = 0.2) -> None:
        if not 0 < top_fraction <= 1:
            raise ValueError(f"HighEntropy.top_fraction must be in (0, 1], got {top_fraction}")
        self.top_fraction = float(top_fraction)

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        if inputs.entropy is None:
            raise ValueError("HighEntropy needs the policy entropy (evidence 'entropy')")
        token_adv = broadcast_advantages(inputs)  # [N, T]
        credited = inputs.mask & (inputs.advantages != 0)[:, None]  # [N, T]
        keep = torch.zeros_like(credited)
        if credited.any():
            threshold = torch.quantile(inputs.entropy[credited].float(), 1.0 - self.top_fraction)
            keep = credited & (inputs.entropy >= threshold)
        weight = keep.float()
        legend = (
            "white: the top fraction of tokens by policy entropy (policy gradient kept), red: the rest; Delta = entropy"
        )
        return CreditOutput(
            torch.where(keep, token_adv, torch.zeros_like(token_adv)),
            weight=torch.where(inputs.mask, weight, torch.ones_like(weight)),
            delta=inputs.entropy.detach(),
            legend=legend,
            weight_range=(0.0, 1.0),
        )

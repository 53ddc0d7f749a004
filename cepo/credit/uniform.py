"""Uniform credit: every response token gets the sequence advantage (GRPO)."""

from __future__ import annotations

import torch

from cepo.credit.base import CreditAssigner, CreditInputs, CreditOutput, broadcast_advantages


class Uniform(CreditAssigner):
    """GRPO: ``Â_t = A_i`` on every response token."""

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        token_adv = broadcast_advantages(inputs)
        zeros = torch.zeros_like(token_adv)
        return CreditOutput(token_adv, zeros, torch.ones_like(token_adv), zeros.bool())

"""Uniform credit: every response token gets the sequence advantage (GRPO)."""

from __future__ import annotations

from cepo.credit.base import CreditAssigner, CreditInputs, CreditOutput, uniform_output


class Uniform(CreditAssigner):
    """GRPO: ``Â_t = A_i`` on every response token."""

    def assign(self, inputs: CreditInputs) -> CreditOutput:
        return uniform_output(inputs)

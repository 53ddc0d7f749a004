"""The beta schedule: the credit rule's mixing coefficient (the paper's lambda) over steps."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L

from cepo.credit import MixedCredit


def beta_at(step: int, beta0: float, kind: str, decay_steps: int) -> float:
    """Beta at rollout step ``step`` (0-based).

    ``linear`` decays from ``beta0`` to 0 over ``decay_steps`` (paper: 0.5 over 25 steps) and
    stays 0 after; ``cosine`` follows half a cosine to 0 over ``decay_steps``; ``constant``
    keeps ``beta0``.
    """
    if kind == "constant":
        return beta0
    frac = min(step / decay_steps, 1.0)
    if kind == "linear":
        return beta0 * (1.0 - frac)
    if kind == "cosine":
        return beta0 * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"beta schedule kind must be linear, cosine or constant, got {kind!r}")


class BetaSchedule(L.Callback):
    """Sets ``pl_module.credit.beta`` before every rollout step and logs it.

    Only rules with a mixing coefficient (:class:`~cepo.credit.MixedCredit`: RLSD, CEPO) take
    part; for any other rule the callback does nothing. The start value is read from the rule
    (``model.credit.init_args.beta``), so it has one home. When beta reaches 0 the rule needs no
    evidence and the module skips the teacher passes.

    Args:
        kind: ``linear`` (default), ``cosine`` or ``constant``.
        decay_steps: rollout steps to reach 0 (``linear``/``cosine``).
    """

    def __init__(self, kind: Literal["linear", "cosine", "constant"] = "linear", decay_steps: int = 25) -> None:
        if decay_steps < 1:
            raise ValueError(f"BetaSchedule.decay_steps must be >= 1, got {decay_steps}")
        beta_at(0, 1.0, kind, decay_steps)  # validates kind
        self.kind = kind
        self.decay_steps = decay_steps
        self.beta0: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.beta0 is None and isinstance(pl_module.credit, MixedCredit):
            self.beta0 = float(pl_module.credit.beta)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if not isinstance(pl_module.credit, MixedCredit):
            return
        beta = beta_at(pl_module.rl_step, self.beta0, self.kind, self.decay_steps)
        pl_module.credit.beta = beta
        pl_module.log("train/beta_schedule", beta, on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer, pl_module) -> None:
        if isinstance(pl_module.credit, MixedCredit):
            pl_module.credit.beta = self.beta0  # leave the rule as configured

    def state_dict(self) -> dict:
        return {"beta0": self.beta0}

    def load_state_dict(self, state_dict: dict) -> None:
        self.beta0 = state_dict.get("beta0")

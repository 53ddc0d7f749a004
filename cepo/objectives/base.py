"""The objective seam: loss terms and training samples beyond the clipped surrogate.

A credit assigner decides *how much* each sampled token is pushed (token advantages). An
:class:`Objective` decides *what else* the step optimizes: a per-token loss added to (or
replacing) the clipped surrogate (OPSD, SDPO, HDPO), and extra rows appended to the rollout
batch before advantages are computed (CIPO's corrections, HDPO's privileged rollouts). The
module calls the hooks in this order every rollout step, with no knowledge of the method:

0. :meth:`Objective.setup` once the policy exists: the shared :class:`~cepo.policy.PolicyRef`,
   the :class:`~cepo.rollout.generator.RolloutGenerator` (same engine, weights and
   verifier as the rollouts) and the micro-batched :class:`~cepo.scoring.Scorer`;
1. :meth:`Objective.build_samples` -> the batch to train on (default: unchanged);
2. :meth:`Objective.prepare` (no grad) -> per-row contexts, :attr:`Objective.active` rows;
3. :meth:`Objective.token_loss` for each micro-batch, with grad, normalised by the
   mini-batch's active tokens and added to ``pg_weight *`` the surrogate;
4. :meth:`Objective.on_step_end` after the optimizer updates; :meth:`Objective.metrics`
   is logged under ``train/<name>/``.

Adding a method is a subclass, an export in ``cepo/objectives/__init__.py``, a
``configs/method/*.yaml`` and tests: no edit to the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cepo.policy import PolicyRef
from cepo.rollout.batch import RolloutBatch
from cepo.rollout.generator import RolloutGenerator
from cepo.scoring import Scorer


@dataclass
class MicroBatch:
    """What :meth:`Objective.token_loss` sees for one micro-batch.

    Attributes:
        batch: the (possibly extended) rollout batch.
        rows: ``[n]`` indices of the micro-batch's rows in ``batch`` (grouped by length, not
            necessarily ascending or contiguous).
        logits: ``[n, T, V]`` temperature-scaled student logits (carry grad); ``T`` is the
            micro-batch's longest response, at most the batch's response width.
        logp: ``[n, T]`` student log-probs of the sampled tokens (carry grad).
        old_logp: ``[n, T]`` log-probs of the policy that sampled (no grad).
        mask: ``[n, T]`` bool response tokens.
        temperature: the sampling temperature (teacher logits are scaled alike).
    """

    batch: RolloutBatch
    rows: torch.Tensor
    logits: torch.Tensor
    logp: torch.Tensor
    old_logp: torch.Tensor
    mask: torch.Tensor
    temperature: float = 1.0


class Objective:
    """Base class: the plain clipped surrogate with no extra term and no extra samples.

    Attributes:
        name: metric prefix (``train/<name>/...``).
        pg_weight: weight of the clipped surrogate in the loss (0: the objective replaces it).
        active: ``[N]`` bool rows whose tokens the extra term covers, set by :meth:`prepare`
            (None: no extra term this step).
    """

    name: str = "objective"
    pg_weight: float = 1.0

    def __init__(self) -> None:
        self.active: torch.Tensor | None = None
        self._metrics: dict[str, float] = {}
        self.policy: PolicyRef | None = None
        self.sampler: RolloutGenerator | None = None
        self.scorer: Scorer | None = None

    def setup(self, policy: PolicyRef, sampler: RolloutGenerator | None, scorer: Scorer) -> None:
        """Connect to the policy, the rollout sampler (None outside ``fit``) and the scorer."""
        self.policy, self.sampler, self.scorer = policy, sampler, scorer

    def build_samples(self, batch: RolloutBatch) -> RolloutBatch:
        """The batch to train on; may append rows (group-major, same group size) with
        ``cepo.rollout.batch.concat(batch, self.sampler.sample(...), pad_id, b_weight)``."""
        return batch

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, advantages: torch.Tensor) -> None:
        """No-grad work once per step; sets :attr:`active`."""
        self.active = None

    def token_loss(self, mb: MicroBatch) -> torch.Tensor:
        """``[n, T]`` extra per-token loss (weighted, 0 off the mask and off active rows)."""
        return torch.zeros_like(mb.logp)

    def on_step_end(self, rl_step: int) -> None:
        """After the step's optimizer updates (``rl_step`` is 1-based)."""

    def metrics(self) -> dict[str, float]:
        """This step's diagnostics (logged as ``train/<name>/<key>``); cleared after reading."""
        out, self._metrics = self._metrics, {}
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        hidden = ("active", "policy", "sampler", "scorer")
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in hidden)
        return f"{type(self).__name__}({fields})"


def check_weight(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")

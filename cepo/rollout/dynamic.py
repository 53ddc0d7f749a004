"""DAPO dynamic sampling: keep the groups whose rewards differ, refill from further prompts.

A group whose ``G`` rewards are all equal has zero GRPO advantage: it costs generation and adds
no gradient. :func:`dynamic_batch` draws a step's prompts, drops such groups, and draws further
prompts from the same stream until ``prompts_per_step`` groups with differing rewards are kept,
for at most ``max_rounds`` generation rounds (docs/algorithms.md §9).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from cepo.advantages import zero_variance_groups
from cepo.rollout.batch import RolloutBatch, gather_groups


@dataclass
class DynamicSampling:
    """DAPO dynamic sampling (docs/algorithms.md §9).

    Attributes:
        max_rounds: generation rounds per rollout step at most; 0 (the default) turns dynamic
            sampling off (every group is trained on), otherwise at least 2. The first round
            draws ``data.prompts_per_step`` prompts; each further round draws the groups still
            missing divided by the share of groups kept so far (``prompts_per_step`` if none
            was kept), at most ``prompts_per_step``. Groups beyond the batch are dropped. When
            the rounds run out, the batch is filled with the zero-variance groups of its rounds
            (no gradient, as without dynamic sampling).
    """

    max_rounds: int = 0

    def __post_init__(self) -> None:
        if self.max_rounds < 0 or self.max_rounds == 1:
            raise ValueError(
                f"data.dynamic_sampling.max_rounds must be 0 (off) or >= 2 (rounds with refills), got {self.max_rounds}"
            )

    @property
    def enabled(self) -> bool:
        return self.max_rounds > 0


def round_size(prompts_per_step: int, missing: int, drawn: int, kept: int) -> int:
    """Prompts a refill round draws: ``missing`` groups over the share kept so far (all
    ``prompts_per_step`` when none was kept), at most ``prompts_per_step``."""
    if kept == 0:
        return prompts_per_step
    return min(prompts_per_step, math.ceil(missing * drawn / kept))


def dynamic_batch(
    draw: Callable[[int], list],
    rollout: Callable[[list], RolloutBatch],
    prompts_per_step: int,
    max_rounds: int,
    pad_id: int,
) -> RolloutBatch:
    """One step's batch of ``prompts_per_step`` groups, preferring groups with differing rewards.

    Args:
        draw: the next ``n`` prompts of the training stream.
        rollout: verified rollouts of prompts, with the current weights.
        prompts_per_step: groups in the batch.
        max_rounds: generation rounds at most (at least 1).
        pad_id: padding token id.

    Returns:
        The kept groups in the order drawn, then (if the rounds ran out) zero-variance groups in
        the order drawn. ``info`` holds ``gen_rounds``, ``groups_kept`` (groups with differing
        rewards in the batch), ``groups_discarded`` (zero-variance groups left out) and
        ``prompts_drawn``.
    """
    kept: list[tuple[RolloutBatch, int]] = []
    ties: list[tuple[RolloutBatch, int]] = []
    drawn = rounds = 0
    while len(kept) < prompts_per_step and rounds < max_rounds:
        missing = prompts_per_step - len(kept)
        n = prompts_per_step if rounds == 0 else round_size(prompts_per_step, missing, drawn, len(kept))
        batch = rollout(draw(n))
        drawn, rounds = drawn + n, rounds + 1
        for p, tie in enumerate(zero_variance_groups(batch.rewards, batch.group_size).tolist()):
            if not tie:
                kept.append((batch, p))
            else:
                ties.append((batch, p))
    padding = ties[: max(prompts_per_step - len(kept), 0)]
    out = gather_groups(kept[:prompts_per_step] + padding, pad_id)
    out.info = {
        "gen_rounds": float(rounds),
        "groups_kept": float(min(len(kept), prompts_per_step)),
        "groups_discarded": float(len(ties) - len(padding)),
        "prompts_drawn": float(drawn),
    }
    return out

"""Stopping a supervised warm-up where it is asked to: at a target greedy accuracy.

A warm-up that checks its accuracy every ``check_every`` steps stops at the first check at or above
the target, so it overshoots by whatever the model gains between two checks. The tiny VL base
learns in jumps: on two machines of the same kind its warm-up stopped at 35.8% and at 67.4% for a
30% target, and built here on 2026-12-05 it went from 13% to 63% between two checks 100 steps
apart (experiments README). Two rules bound the overshoot:

- **Near the target the checks come often.** Once a check is within ``near`` of the target they
  come every ``near_every`` steps, so a gradual rise stops within what ``near_every`` steps gain.
- **A jump is undone.** Between checks the weights are copied every ``near_every`` steps. When a
  check lands more than ``tolerance`` above the target, those copies are re-checked in order (one
  check each) up to the first at or above the target, and the warm-up ends on whichever of that
  copy and the last one below it (the previous check's weights, or a copy) is closer to the target
  (ties: the one at or above). If no copy reaches the target, the overshooting check's own
  weights are the one at or above.

The result lies within what ``near_every`` steps gain, plus each check's sampling error over its
``check_size`` problems (about 3 points at 30% on 200), of the target, unless the model jumps
further within ``near_every`` steps. A warm-up that ends here needs no optimizer state, so the
copies are of the weights only (the VL base's ~0.2M parameters: under 1 MB each).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def check_due(
    step: int, last_accuracy: float | None, *, target: float, near: float, every: int, near_every: int, max_steps: int
) -> bool:
    """Whether optimizer step ``step`` (from 1) ends with an accuracy check.

    Every ``every`` steps while the last check (``last_accuracy``, None before the first) is more
    than ``near`` below ``target``; every ``near_every`` steps once it came within ``near``; and at
    ``max_steps``.
    """
    if step >= max_steps:
        return True
    close = last_accuracy is not None and last_accuracy >= target - near
    return step % (near_every if close else every) == 0


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state (parameters and persistent buffers) that later updates leave alone."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class TargetStop:
    """The accuracy checks of one warm-up, the decision to stop and, after a jump, the rewind.

    Args:
        target: stop at the first check at or above this accuracy.
        near: checks come every ``near_every`` steps once one is within ``near`` of ``target``.
        every: steps between checks far from the target.
        near_every: steps between checks near the target, and between copies of the weights.
        max_steps: the warm-up's last step (always checked).
        tolerance: a stopping check more than this above ``target`` re-checks the copies of the
            weights made since the previous check and ends on the one closest to ``target``.
    """

    target: float
    near: float
    every: int
    near_every: int
    max_steps: int
    tolerance: float = float("inf")
    checks: list[tuple[int, float]] = field(default_factory=list)
    """``(step, accuracy)`` of every regular check so far."""
    rechecks: list[tuple[int, float]] = field(default_factory=list)
    """``(step, accuracy)`` of the copies re-checked after an overshooting check."""
    chosen: tuple[int, float] | None = None
    """``(step, accuracy)`` of the weights the warm-up ends with, once it stops."""
    _copies: list[tuple[int, dict[str, torch.Tensor], float | None]] = field(default_factory=list, repr=False)

    def update(self, step: int, accuracy: Callable[[], float], model: torch.nn.Module) -> bool:
        """Check at ``step`` if one is due (``accuracy()`` measures ``model``); True when the warm-up
        should stop, with ``model`` then holding the weights of :attr:`chosen`."""
        last = self.checks[-1][1] if self.checks else None
        due = check_due(
            step,
            last,
            target=self.target,
            near=self.near,
            every=self.every,
            near_every=self.near_every,
            max_steps=self.max_steps,
        )
        if not due:
            if step % self.near_every == 0:
                self._copies.append((step, weights(model), None))
            return False
        acc = accuracy()
        self.checks.append((step, acc))
        if acc < self.target:
            self._copies = [(step, weights(model), acc)]  # the last weights known to be below
            return False
        if acc > self.target + self.tolerance and self._copies:
            self.chosen = self._rewind(step, acc, accuracy, model)
        else:
            self.chosen = (step, acc)
        self._copies = []
        return True

    def _rewind(
        self, step: int, acc: float, accuracy: Callable[[], float], model: torch.nn.Module
    ) -> tuple[int, float]:
        """Re-check the copies since the previous check; load and return the one closest to the target."""
        above = (step, weights(model), acc)  # the overshooting check, unless a copy reaches the target
        below = None
        for at, state, known in self._copies:
            if known is None:
                model.load_state_dict(state)
                known = accuracy()
                self.rechecks.append((at, known))
            if known >= self.target:
                above = (at, state, known)
                break
            below = (at, state, known)
        pick = above if below is None or above[2] - self.target <= self.target - below[2] else below
        model.load_state_dict(pick[1])
        return pick[0], pick[2]

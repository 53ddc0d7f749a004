"""Stopping a supervised warm-up where it is asked to: at a target greedy accuracy.

A warm-up that checks its accuracy every ``check_every`` steps stops at the first check at or above
the target, so it overshoots by whatever the model gains between two checks. The tiny VL base
learns in jumps: on two machines of the same kind its warm-up stopped at 35.8% and at 67.4% for a
30% target, and a base at 67% leaves GRPO little room. Near the target the checks therefore come
every ``near_check_every`` steps, which bounds the overshoot by what ``near_check_every`` steps can
gain (plus the check's own sampling error over ``check_size`` problems). A jump that starts
below the margin and ends past the target within one ``check_every`` interval is not bounded:
built here on 2026-12-05, the VL base went from 13% to 63% between two checks (experiments README).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


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


@dataclass
class TargetStop:
    """The accuracy checks of one warm-up and the decision to stop.

    Args:
        target: stop at the first check at or above this accuracy.
        near: checks come every ``near_every`` steps once one is within ``near`` of ``target``.
        every: steps between checks far from the target.
        near_every: steps between checks near the target.
        max_steps: the warm-up's last step (always checked).
    """

    target: float
    near: float
    every: int
    near_every: int
    max_steps: int
    checks: list[tuple[int, float]] = field(default_factory=list)
    """``(step, accuracy)`` of every check so far."""

    def update(self, step: int, accuracy: Callable[[], float]) -> bool:
        """Check at ``step`` if one is due (``accuracy()`` measures it); True when the warm-up should stop."""
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
            return False
        self.checks.append((step, accuracy()))
        return self.checks[-1][1] >= self.target

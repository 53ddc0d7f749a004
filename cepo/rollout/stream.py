"""A resumable stream of training prompts, drawn by the DataModule itself.

With dynamic sampling or one-step-off rollouts on, the DataModule decides how many prompts a
step draws (refill rounds) and when (the next batch while this one trains), so the prompts
cannot come from Lightning's DataLoader, which prefetches a fixed batch ahead. The train
DataLoader then yields only step tickets, and every prompt comes from a :class:`PromptStream`:
the training split shuffled once per data epoch (``torch.randperm`` seeded with the stream's
seed plus the epoch's number) and read in order. The seed comes from the sampling settings, not
from a global random stream, so prompts may be drawn from a background thread. Its position is
saved in the DataModule's ``state_dict``, so a resumed run draws the same prompts as the
uninterrupted one.
"""

from __future__ import annotations

import torch


class PromptStream:
    """Row indices of a split of ``n`` rows, in shuffled order, epoch after epoch.

    Args:
        n: rows in the split (at least 1).
        seed: epoch ``e`` (from 0) is ``torch.randperm(n)`` seeded with ``seed + e``.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the task has no training split")
        self.n, self.seed = n, seed
        self.taken = 0  # rows taken since the start of the run
        self._order: tuple[int, list[int]] | None = None  # (epoch, its permutation)

    def order(self, epoch: int) -> list[int]:
        """The row order of data epoch ``epoch``."""
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(self.n, generator=generator).tolist())
        return self._order[1]

    def take(self, k: int) -> list[int]:
        """The next ``k`` row indices (an epoch that runs out continues with the next one)."""
        out: list[int] = []
        while len(out) < k:
            epoch, position = divmod(self.taken, self.n)
            piece = self.order(epoch)[position : position + k - len(out)]
            out += piece
            self.taken += len(piece)
        return out

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = int(state.get("taken", 0))

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

:class:`StreamedRollouts` turns the stream into each step's rollouts: dynamic sampling's refill
rounds (:mod:`cepo.rollout.dynamic`) and the next batch generated in the background
(:mod:`cepo.rollout.one_step_off`), with the draw state a checkpoint keeps.
"""

from __future__ import annotations

import torch

from cepo.rollout.batch import RolloutBatch
from cepo.rollout.dynamic import DynamicSampling, dynamic_batch
from cepo.rollout.generator import RolloutGenerator
from cepo.rollout.one_step_off import OneStepOff
from cepo.tasks import Example


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


class StreamedRollouts:
    """Each training step's rollouts from prompts drawn from a :class:`PromptStream`.

    Args:
        prompts_per_step: prompts a step trains on.
        seed: the stream's seed.
        dynamic: DAPO dynamic sampling (refill rounds when enabled).
        background: the one-step-off generator (None: each step's batch is generated when asked).
    """

    def __init__(
        self, prompts_per_step: int, seed: int, dynamic: DynamicSampling, background: OneStepOff | None
    ) -> None:
        self.prompts_per_step, self.seed = prompts_per_step, seed
        self.dynamic, self.background = dynamic, background
        self.rows: list[Example] = []
        self.stream: PromptStream | None = None  # made from the training rows (start)
        self._state: dict | None = None  # a restored position, for the stream not made yet

    def start(self, rows: list[Example]) -> None:
        """Draw from ``rows`` (the training split) from now on."""
        self.rows = rows
        if self.stream is None:
            self.stream = PromptStream(len(rows), self.seed)
            self.stream.load_state_dict(self._state or {})

    def next(self, sampler: RolloutGenerator) -> RolloutBatch:
        """This step's batch, generated now with ``sampler`` or by the background generator."""
        if self.background is None:
            return self.rollouts(sampler)
        return self.background.next(self.rollouts, self.draw_state)

    def rollouts(self, sampler: RolloutGenerator) -> RolloutBatch:
        """One step's rollouts from the stream, with ``sampler`` (dynamic sampling's rounds when it is on)."""

        def draw(n: int) -> list[Example]:
            return [self.rows[i] for i in self.stream.take(n)]

        if not self.dynamic.enabled:
            return sampler.rollout(draw(self.prompts_per_step))
        pad_id = sampler.tokenizer.pad_token_id
        return dynamic_batch(draw, sampler.rollout, self.prompts_per_step, self.dynamic.max_rounds, pad_id)

    def draw_state(self) -> dict:
        """The stream's position and the background generator's draw counter."""
        stream = self.stream.state_dict() if self.stream is not None else (self._state or {})
        state = {"stream": dict(stream)}
        if self.background is not None:
            state["rollout_engine"] = self.background.sampler.engine.state_dict()
        return state

    def state_dict(self) -> dict:
        """The draw state to checkpoint: with a batch pending, the one from before its draws (a
        resume draws it again)."""
        if self.background is not None and self.background.pending:
            return self.background.state_at_launch
        return self.draw_state()

    def load_state_dict(self, state: dict) -> None:
        self._state = state.get("stream")
        if self.stream is not None:
            self.stream.load_state_dict(self._state or {})
        if self.background is not None:
            self.background.sampler.engine.load_state_dict(state.get("rollout_engine", {}))

    def stop(self) -> None:
        """Stop a pending background batch; the draw state goes back to before its draws."""
        if self.background is not None and self.background.pending:
            state = self.background.state_at_launch
            self.background.wait()
            self.load_state_dict(state)

"""The resumable index sampler of the training prompts: which problems each step rolls out.

:class:`ResumableSampler` shuffles as ``RandomSampler`` does and can continue an epoch where a
checkpoint left it; what it needs to do so lives in an :class:`EpochLog` that its DataModule
keeps and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cepo import distributed


@dataclass
class EpochLog:
    """The epochs begun and where to resume.

    Attributes:
        epochs: per epoch begun, ``(shuffle seed, batches served before it)``.
        resume: ``(seed, rows already served)`` of the epoch to continue after a restore, or None.
    """

    epochs: list[tuple[int, int]] = field(default_factory=list)
    resume: tuple[int, int] | None = None

    def restore(self, epochs: list, served: int, rows_per_batch: int) -> None:
        """From a checkpoint: its epochs, the epoch in progress continued past the rows served."""
        self.epochs = [tuple(e) for e in epochs]
        self.resume = None
        if self.epochs:
            seed, first = self.epochs[-1]
            self.resume = (seed, (served - first) * rows_per_batch)


class ResumableSampler(torch.utils.data.DistributedSampler):
    """A shuffling sampler that can continue an epoch where a checkpoint left it.

    Each epoch's order is ``torch.randperm`` seeded with a seed drawn from the global RNG when the
    epoch starts, exactly as ``RandomSampler`` draws it (so a fresh run's order is the same as with
    ``shuffle=True``). The seeds and the batches served when each epoch began go to ``log``; after
    a restore the interrupted epoch continues with its seed, past the rows already trained on.

    Under DDP/FSDP (``num_replicas`` processes) every process uses rank 0's seed (broadcast on
    ``device``) and takes every ``num_replicas``-th problem of the order from its ``rank`` on (the
    last ``n % num_replicas`` left out), so the processes roll out disjoint prompts even when their
    global random streams differ. Being a ``DistributedSampler``, Lightning leaves it in place.

    Args:
        n: problems in the split.
        log: the epochs begun and where to resume (kept by the DataModule).
        served: the batches served so far.
        device: where the seed is broadcast from rank 0 (None: no broadcast).
    """

    def __init__(
        self,
        n: int,
        log: EpochLog,
        served: Callable[[], int],
        device=None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.n, self.log, self.served, self.device = n, log, served, device
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.shuffle, self.drop_last = 0, True, True

    def __len__(self) -> int:
        return self.n // self.num_replicas

    def __iter__(self):
        skip = 0
        if self.log.resume is not None:  # continue the checkpointed epoch
            seed, skip = self.log.resume
            self.log.resume = None
        else:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            if self.num_replicas > 1 and distributed.initialized():
                seed = distributed.broadcast_int(seed, self.device)
            self.log.epochs.append((seed, self.served()))
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(self.n, generator=generator)[: len(self) * self.num_replicas]
        yield from order[self.rank :: self.num_replicas].tolist()[skip:]

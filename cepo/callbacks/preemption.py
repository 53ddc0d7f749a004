"""Checkpoints that survive a kill, and a clean stop on SIGTERM.

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it into place,
so a process killed while saving leaves the previous checkpoint whole. :class:`Preemption` answers
SIGTERM (a scheduler's preemption notice; Lightning records it): after the step in progress it
saves ``last.ckpt`` in the run's checkpoint folder and stops; ``cepo`` then exits with code 0 and
the run resumes exactly with ``--ckpt_path <run>/checkpoints/last.ckpt``. On SLURM, Lightning's own
SIGUSR1 handling (an HPC checkpoint and a requeue) applies as well; the DataModule's state, which
makes the resume exact, is part of every checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to ``<path>.tmp`` and renames it over ``path`` (one atomic step on POSIX)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = Path(f"{path}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class Preemption(L.Callback):
    """On SIGTERM: save ``last.ckpt`` after the current step and stop.

    Args:
        enabled: react to SIGTERM (False: Lightning's default, which stops without a checkpoint).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.saved: str | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.enabled or not getattr(trainer, "received_sigterm", False) or self.saved:
            return
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or os.path.join(
            trainer.default_root_dir, "checkpoints"
        )
        self.saved = os.path.join(folder, "last.ckpt")
        trainer.save_checkpoint(self.saved)
        trainer.should_stop = True

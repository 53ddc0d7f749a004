"""Checkpoints that survive a kill, and a clean stop on SIGTERM.

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it into place,
so a process killed while saving leaves the previous checkpoint whole. :class:`Preemption` answers
SIGTERM (a scheduler's preemption notice; Lightning records it): after the step in progress it
saves ``last.ckpt`` in the run's checkpoint folder and stops without running a validation (one
that was due then runs after the resume); ``cepo`` then exits with code 0 and
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


def _checkpoint_saves_last_now(trainer) -> bool:
    """Whether the ModelCheckpoint writes ``last.ckpt`` after this step anyway (it runs after the
    other callbacks)."""
    ckpt = trainer.checkpoint_callback
    every = getattr(ckpt, "_every_n_train_steps", 0) or 0
    return bool(ckpt is not None and getattr(ckpt, "save_last", False) and every and trainer.global_step % every == 0)


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
        if not _checkpoint_saves_last_now(trainer):  # else it would version its own as last-v1.ckpt
            trainer.save_checkpoint(self.saved)  # records a validation due at this step: the resume runs it
        # Leave without validating: Lightning validates before stopping on should_stop, and a full
        # evaluation may outlast the scheduler's grace period. Its own SIGTERM check then raises
        # SIGTERMException after this step (cepo exits 0); at the last step the run just ends.
        trainer.fit_loop.epoch_loop._skip_next_val = True

"""Which stage each process is in, for the one line a failed collective ends in.

The multi-process paths rely on every process entering the same collectives in the same order
(``cepo.distributed``). When that breaks, the process group's timeout (``--dist_timeout``) or a
dead peer raises in whichever collective was waiting; this callback keeps the outer stage current
(rollout step, validation, checkpoint) so that ``cepo`` can name it, and on such a failure the
first process stops the processes Lightning started, which would otherwise wait on.
"""

from __future__ import annotations

import signal

import lightning as L
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from cepo import distributed


class ProcessStages(L.Callback):
    """Names the outer stage of every process (``cepo.distributed.stage``) at Lightning's hooks."""

    def on_fit_start(self, trainer, pl_module) -> None:
        distributed.set_stage("start of training (restore, first rollouts)")

    def on_train_start(self, trainer, pl_module) -> None:
        # every process has started, loaded the policy and restored any checkpoint (FSDP restores
        # after on_fit_start): from here on the collectives get --dist_timeout
        distributed.apply_timeout()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        distributed.set_stage(f"rollout step {pl_module.rl_step + 1}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        distributed.set_stage(f"after rollout step {pl_module.rl_step} (callbacks, checkpoint, next rollouts)")

    def on_validation_start(self, trainer, pl_module) -> None:
        distributed.apply_timeout()  # cepo validate: the first hook after start-up
        distributed.set_stage(f"validation at rollout step {pl_module.rl_step}")

    def on_validation_end(self, trainer, pl_module) -> None:
        distributed.set_stage(f"after the validation at rollout step {pl_module.rl_step}")

    def on_fit_end(self, trainer, pl_module) -> None:
        distributed.set_stage("end of training")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher
        if distributed.failure(exception) and isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(signal.SIGKILL)  # the processes it started (none on the others)

"""Training progress as optimizer steps N/M.

cepo's runs and warm-ups are sized in steps (``trainer.max_steps``, ``max_epochs: -1``), so
Lightning's bars, which count epochs ("Epoch 2/-2") and the batches of the current one, say
nothing useful. These bars read "Step" and count ``trainer.global_step`` against
``trainer.max_steps`` across epochs (a resumed run starts at its checkpoint's step).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


def _total(bar: ProgressBar, fallback):
    steps = bar.trainer.max_steps
    return steps if steps is not None and steps > 0 else fallback


class StepsRichProgressBar(RichProgressBar):
    """:class:`RichProgressBar` whose training bar is "Step N/M" (optimizer steps)."""

    @property
    def total_train_batches(self):
        return _total(self, super().total_train_batches)

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'Step':{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)


class StepsTQDMProgressBar(TQDMProgressBar):
    """:class:`TQDMProgressBar` whose training bar is "Step N/M" (optimizer steps)."""

    @property
    def total_train_batches(self):
        return _total(self, super().total_train_batches)

    def _show(self, trainer) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.refresh()

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("Step")
        self._show(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show(trainer)


def steps_progress_bar() -> ProgressBar:
    """The bar Lightning would pick (rich when installed, else tqdm), counting steps."""
    return StepsRichProgressBar() if _RICH_AVAILABLE else StepsTQDMProgressBar()


def count_steps(callbacks: list) -> None:
    """Replace Lightning's default progress bar in ``callbacks`` (a trainer's) by its steps
    counting twin, in place; a bar the user configured stays."""
    for i, callback in enumerate(callbacks):
        if type(callback) is RichProgressBar:
            callbacks[i] = StepsRichProgressBar()
        elif type(callback) is TQDMProgressBar:
            callbacks[i] = StepsTQDMProgressBar()

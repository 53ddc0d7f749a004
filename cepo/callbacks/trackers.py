"""Experiment trackers (Weights & Biases, MLflow) through Lightning's own loggers.

A run logs to a tracker when its config adds the tracker's Lightning logger
(``configs/logging/wandb.yaml``, ``configs/logging/mlflow.yaml`` append one to ``trainer.logger``).
Metrics reach every logger as they do the CSV one. A tracker also gets what the CSV and TensorBoard
logs keep as files in the run directory:

- the resolved config, as the run's parameters (W&B's config, which W&B keeps as the run's
  ``config.yaml``; MLflow's params, flattened with ``/``, plus the artifact ``config/config.yaml``)
  (:class:`SaveConfigToTrackers`, Lightning's hook for it);
- the token-weight pages (``token_weights/step_*.html``, ``.json``, ``.png``), each uploaded once,
  after the step that wrote it (:class:`TrackerUploads`).

A W&B run keeps these files as the run's files (``Run.save``: its Files tab, and in offline mode
``<offline run>/files/``); an MLflow run as its artifacts (``MlflowClient.log_artifact``).
Both only on the first process.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

PAGES = "token_weights"
"""The run-directory folder whose files are uploaded (where :class:`TokenWeightLogger` writes)."""


def is_tracker(logger) -> bool:
    """Whether ``logger`` is a tracker that takes the run's files (W&B or MLflow)."""
    return isinstance(logger, (WandbLogger, MLFlowLogger))


def upload(logger, path: Path) -> None:
    """Send the file ``path`` to the tracker behind ``logger``, as ``<its folder's name>/<name>``."""
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=path.parent.name)
    elif isinstance(logger, WandbLogger):
        logger.experiment.save(str(path), base_path=str(path.parent.parent), policy="now")


class SaveConfigToTrackers(SaveConfigCallback):
    """Lightning's ``config.yaml`` writer, which also gives the resolved config to every tracker
    as its parameters, and to MLflow as the artifact ``config/config.yaml`` too."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        # trainer.log_dir is a collective: read on every process, never in save_config (first only)
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        trackers = [lg for lg in trainer.loggers if is_tracker(lg)]
        if not trackers:
            return
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        for logger in trackers:
            logger.log_hyperparams(config)
            if isinstance(logger, MLFlowLogger):  # W&B writes the config it is given as config.yaml
                logger.experiment.log_text(logger.run_id, text, "config/config.yaml")


class TrackerUploads(L.Callback):
    """Uploads each new file of the run's ``token_weights/`` folder to every tracker, after the
    training step that wrote it and when fit ends."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.folder: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # on every process: trainer.log_dir is a collective (see TokenWeightLogger.setup)
        self.folder = Path(trainer.log_dir or trainer.default_root_dir) / PAGES

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.send(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.send(trainer)

    def send(self, trainer) -> None:
        trackers = [lg for lg in trainer.loggers if is_tracker(lg)]
        folder = self.folder
        if not trackers or not trainer.is_global_zero or folder is None or not folder.is_dir():
            return
        new = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in self.sent)
        for path in new:
            for logger in trackers:
                upload(logger, path)
            self.sent.add(path.name)

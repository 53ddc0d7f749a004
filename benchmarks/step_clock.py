"""A Lightning callback for benchmark runs of ``cepo fit``: the wall time of every training step.

``benchmarks/vs_trl.py`` adds it (``trainer.callbacks``, with ``benchmarks/`` on ``PYTHONPATH``) so
that cepo's steps are timed the way TRL's are: from the previous step's end (or the start of
training) to this step's end, everything in between included (the rollout generation, which the
DataModule runs before ``training_step``, the update, logging). Writes a JSON list of seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class StepClock(L.Callback):
    """Writes ``[seconds of step 1, step 2, ...]`` to ``path`` after every step.

    Args:
        path: the JSON file to write.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.marks: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.marks = [time.perf_counter()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.marks.append(time.perf_counter())
        seconds = [b - a for a, b in zip(self.marks, self.marks[1:])]
        self.path.write_text(json.dumps(seconds))

"""A callback that records when each training step ends, for wall-clock step times.

Named by benchmark runs as ``--trainer.callbacks benchmarks.clock.StepClock``; it writes the
``time.perf_counter()`` of every step's end as a JSON list to ``$CEPO_BENCH_CLOCK``.
"""

from __future__ import annotations

import json
import os
import time

import lightning as L


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        with open(os.environ["CEPO_BENCH_CLOCK"], "w") as fh:
            json.dump(self.ends, fh)

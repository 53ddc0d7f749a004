"""Which prompts each DDP rank rolls out: one rank of a 2-process gloo ``fit`` with the real
:class:`RolloutDataModule` (transformers engine, tiny model), used by ``tests/test_distributed.py``.

As the ``data`` job of ``python -m tests.ranks`` (:func:`run`), each rank trains 4 rollout steps over
2 epochs of an 8-problem task, 2 prompts per step and rank, and returns every step's prompts and
the prompt of every rollout row. Rank 1 draws from the
global random stream after each step, as a rank does whose extra micro-batches run dropout: the
ranks' global streams then differ, and the data order must not depend on them.
"""

from __future__ import annotations

import lightning as L
import torch

from cepo.module import RLModule
from cepo.rollout.datamodule import RolloutDataModule
from cepo.rollout.engine import SamplingConfig
from tests.helpers import TextParity, trainer

GROUP = 4


class Record(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
        start = batch.response_start
        rows = [tuple(r[:start][m[:start].bool()].tolist()) for r, m in zip(batch.input_ids, batch.attention_mask)]
        self.steps.append(
            {"prompts": list(batch.provenance.prompts), "row_prompts": rows, "group_size": batch.group_size}
        )

    def on_train_batch_end(self, tr, pl_module, outputs, batch, batch_idx):
        if tr.global_rank == 1:
            torch.rand(7)  # rank-dependent use of the global random stream


def run(model_dir: str, out) -> dict:
    """This rank's steps (prompts and rows), the training split and the sampling seeds."""
    L.seed_everything(0)
    module = RLModule(model_path=model_dir, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    data = RolloutDataModule(
        task=TextParity(train_size=8, val_size=4, test_size=4),
        prompts_per_step=2,
        group_size=GROUP,
        sampling=SamplingConfig(max_new_tokens=4),
        eval_k=0,
    )
    record = Record()
    tr = trainer(out, steps=4, devices=2, strategy="ddp", callbacks=[record])
    tr.fit(module, datamodule=data)
    train = [e.prompt for e in data.task.split("train")]
    return {
        "steps": record.steps,
        "train": train,
        "seed": data.sampler.sampling.seed,
        "base_seed": data.sampling.seed,
    }

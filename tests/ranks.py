"""Several two-rank jobs in one launch, for ``tests/test_distributed.py``: one process start-up for
all of them instead of one per test.

``python -m tests.ranks MODEL_DIR OUT_DIR JOB [JOB ...]`` runs as each of 2 processes of one gloo
group (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set; Lightning then
joins that group instead of launching processes). The jobs run one after the other in the same
process group, each from its own model and trainer, and each saves what it returns to
``OUT_DIR/<JOB>.rank<r>.pt``:

- ``update:CREDIT-STRATEGY-LAYOUT[-MAX_TOKENS]`` (``update:uniform-fsdp-uneven``): one optimizer
  update on hand-made rollout batches (:func:`tests.ddp_step.run`);
- ``weights:lora`` or ``weights:full``: what a vLLM push reads from an FSDP-sharded policy
  (:func:`tests.fsdp_weights.run`);
- ``data``: which prompts each rank rolls out in a real fit (:func:`tests.ddp_data.run`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist


def run_job(job: str, model_dir: str, out: Path) -> dict:
    from tests import ddp_data, ddp_step, fsdp_weights

    kind, _, arg = job.partition(":")
    if kind == "update":
        return ddp_step.run(model_dir, arg, out)
    if kind == "weights":
        return fsdp_weights.run(arg)
    if kind == "data":
        return ddp_data.run(model_dir, out)
    raise ValueError(f"tests.ranks: unknown job {job!r}")


def main(argv: list[str]) -> None:
    model_dir, out, *jobs = argv
    torch.set_num_threads(1)
    for job in jobs:
        print(f"tests.ranks: job {job}", flush=True)  # names the job a failure log ends in
        result = run_job(job, model_dir, Path(out))
        torch.save(result, Path(out) / f"{job}.rank{dist.get_rank()}.pt")
    # as cepo's main does: a gloo group left to interpreter exit sometimes aborts the process
    # ("terminate called without an active exception", exit -6) after the work is done
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

"""The weights a vLLM engine receives from an FSDP-sharded policy, as one rank of a 2-process
gloo run (``python -m tests.fsdp_weights LORA OUT_DIR`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` set); used by ``tests/test_distributed.py``.

Each rank builds the same small Llama (LoRA-wrapped with random adapters when ``LORA`` is
``lora``), reads :func:`cepo.rollout.vllm_engine.hf_weights` of an unsharded copy, shards the
model with :func:`cepo.parallel.shard` and reads the engine's push again: names, shapes (known
before any gather) and values, saved to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from cepo import parallel
from cepo.rollout.vllm_engine import VLLMEngine, hf_weights
from tests.helpers import tiny_llama


def main(argv: list[str]) -> None:
    lora, out = argv[0] == "lora", Path(argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model = tiny_llama(tie_word_embeddings=True)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)  # the adapter moved, as after training
    reference = hf_weights(copy.deepcopy(model))
    parallel.shard(model, init_device_mesh("cpu", (2,)))
    local = next(p for p in model.parameters()).to_local().shape  # this rank's shard
    shapes, weights = VLLMEngine()._weights(model)  # what a sync pushes: shapes first, then gathers
    pushed = list(weights)
    torch.save(
        {"reference": reference, "pushed": pushed, "shapes": shapes, "local": tuple(local)},
        out / f"rank{dist.get_rank()}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

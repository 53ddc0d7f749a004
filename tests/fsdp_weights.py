"""The weights a vLLM engine receives from an FSDP-sharded policy, as one rank of a 2-process
gloo run (a ``weights:lora`` or ``weights:full`` job of ``python -m tests.ranks``); used by
``tests/test_distributed.py``.

Each rank builds the same small Llama (LoRA-wrapped with random adapters for ``lora``), reads
:func:`cepo.rollout.vllm_engine.hf_weights` of an unsharded copy, shards the model with
:func:`cepo.distributed.shard` and reads the engine's push again: names, shapes (known before any
gather) and values.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from cepo import distributed
from cepo.rollout.vllm_engine import VLLMEngine, hf_weights
from tests.helpers import tiny_llama


def run(variant: str) -> dict:
    """This rank's reference weights, pushed weights, pushed shapes and local shard shape."""
    lora = variant == "lora"
    if not dist.is_initialized():
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
    distributed.shard(model, init_device_mesh("cpu", (2,)))
    local = next(p for p in model.parameters()).to_local().shape  # this rank's shard
    shapes, weights = VLLMEngine()._weights(model)  # what a sync pushes: shapes first, then gathers
    pushed = list(weights)
    return {"reference": reference, "pushed": pushed, "shapes": shapes, "local": tuple(local)}

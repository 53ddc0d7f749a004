"""Loading the policy (any ``AutoModelForCausalLM`` folder, optionally LoRA-wrapped) and the
handle that the rollout sampler and the objectives share with the module.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cepo import distributed, lora
from cepo.lora import LoraSettings
from cepo.vision import VL_MODEL_TYPES, Images, Vision

log = logging.getLogger(__name__)

LORA_AUTO_MIN_PARAMS = 50_000_000
"""With ``lora: auto``, models at least this large train a LoRA adapter, smaller ones all weights."""


@dataclass
class PolicyRef:
    """The trained policy as the rest of a run sees it: connected once, never copied.

    Attributes:
        model: the policy module (LoRA-wrapped or not); its parameters are the ones trained.
        tokenizer: its tokenizer.
        path: the Hugging Face folder it was loaded from.
        version: optimizer updates applied so far (the *weight version*); the module bumps it
            after every update, rollout engines compare it with the version they hold.
        vision: image handling of a vision-language policy (None: a text model).
    """

    model: torch.nn.Module
    tokenizer: object
    path: str
    version: int = 0
    vision: Vision | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str, images: Images | None = None) -> list[int]:
        """Token ids of a prompt text (its ``<image>`` placeholders expanded for a VL policy)."""
        if self.vision is not None:
            return self.vision.prompt_ids(text, images)
        return self.tokenizer(text, add_special_tokens=False).input_ids


LANGUAGE_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
"""LoRA targets of a vision-language policy with ``target_modules: all-linear``: the language model."""


def load_policy(
    path: str,
    lora_mode: Literal["auto", "on", "off"] = "auto",
    lora_settings: LoraSettings | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    train_vision: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """Load tokenizer and model from the folder ``path``; wrap in LoRA when asked.

    A folder of the Qwen2-VL family loads as an image-text-to-text model with its image processor;
    its vision tower is frozen unless ``train_vision``, and LoRA adapts the language model only.

    Returns:
        ``(policy, tokenizer, vision)`` (``vision`` None for a text model).
    """
    from transformers import AutoConfig

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(path)
    is_vl = getattr(config, "model_type", None) in VL_MODEL_TYPES
    if is_vl:
        from transformers import AutoModelForImageTextToText

        policy = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
    else:
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    vision = Vision.from_folder(path, tokenizer, config, min_pixels, max_pixels)
    n_params = sum(p.numel() for p in policy.parameters())
    use_lora = lora_mode == "on" or (lora_mode == "auto" and n_params >= LORA_AUTO_MIN_PARAMS)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if is_vl and not train_vision:
        for p in policy.model.visual.parameters():
            p.requires_grad_(False)
    if use_lora:
        settings = lora_settings or LoraSettings()
        if is_vl and settings.target_modules == "all-linear":
            settings = dataclasses.replace(settings, target_modules=LANGUAGE_LINEAR)
        policy = lora.wrap(policy, settings)
    log.info("policy %s: %.2fM parameters, LoRA %s", path, n_params / 1e6, "on" if use_lora else "off")
    return policy, tokenizer, vision


def export_hf(policy: torch.nn.Module, tokenizer, path, write: bool = True, vision: Vision | None = None) -> None:
    """Save ``policy`` (LoRA merged into a copy) and its tokenizer as a Hugging Face folder.

    The folder holds what loading it again needs: the weights and config, the generation config,
    the tokenizer with its chat template, and for a vision-language policy (``vision``) its image
    processor, at the run's pixel bounds: the layout of a hub Qwen-VL folder, so ``cepo validate
    --model.model_path`` and transformers' ``AutoProcessor`` / ``AutoModelForImageTextToText``
    load it.

    A policy sharded with FSDP is gathered into an unsharded copy first: every process must call
    this (a collective); only those with ``write`` save."""
    from transformers import GenerationConfig

    from cepo.bases.tiny import save_tokenizer

    if distributed.is_sharded(policy):
        policy = unsharded_copy(policy)
    if not write:
        return
    model = lora.merged_copy(policy)
    model.save_pretrained(path)
    if not (Path(path) / "generation_config.json").is_file():  # save_pretrained skips it for some models
        GenerationConfig.from_model_config(model.config).save_pretrained(path)
    save_tokenizer(tokenizer, path)
    if vision is not None:
        processor = copy.deepcopy(vision.processor)
        size = dict(getattr(processor, "size", None) or {})
        if vision.min_pixels and "shortest_edge" in size:  # the bounds the run encoded its images with
            size["shortest_edge"] = vision.min_pixels
        if vision.max_pixels and "longest_edge" in size:
            size["longest_edge"] = vision.max_pixels
        if size:
            processor.size = size
        processor.save_pretrained(path)


def unsharded_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """A plain (unsharded) copy of an FSDP-sharded policy, LoRA adapter included (a collective)."""
    from torch.distributed.fsdp import FSDPModule

    state = distributed.full_state_dict(policy)
    base = policy.get_base_model() if lora.is_peft(policy) else policy
    cls = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))  # fully_shard subclasses it
    twin = cls(base.config).to(next(iter(state.values())).dtype)
    if lora.is_peft(policy):
        from peft import get_peft_model

        twin = get_peft_model(twin, policy.peft_config[policy.active_adapter])
    twin.load_state_dict(state)
    return twin

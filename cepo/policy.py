"""Loading the policy (any ``AutoModelForCausalLM`` folder, optionally LoRA-wrapped) and the
handle that the rollout sampler and the objectives share with the module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cepo import lora
from cepo.lora import LoraSettings

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
    """

    model: torch.nn.Module
    tokenizer: object
    path: str
    version: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_policy(
    path: str,
    lora_mode: Literal["auto", "on", "off"] = "auto",
    lora_settings: LoraSettings | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
):
    """Load tokenizer and causal LM from the folder ``path``; wrap in LoRA when asked.

    Returns:
        ``(policy, tokenizer)``.
    """
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    n_params = sum(p.numel() for p in policy.parameters())
    use_lora = lora_mode == "on" or (lora_mode == "auto" and n_params >= LORA_AUTO_MIN_PARAMS)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if use_lora:
        policy = lora.wrap(policy, lora_settings)
    log.info("policy %s: %.2fM parameters, LoRA %s", path, n_params / 1e6, "on" if use_lora else "off")
    return policy, tokenizer


def export_hf(policy: torch.nn.Module, tokenizer, path) -> None:
    """Save ``policy`` (LoRA merged into a copy) and its tokenizer as a Hugging Face folder."""
    from cepo.tiny import save_tokenizer

    lora.merged_copy(policy).save_pretrained(path)
    save_tokenizer(tokenizer, path)

"""Loading the policy: any ``AutoModelForCausalLM`` folder, optionally wrapped in LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

BUILTIN = "builtin"
LORA_AUTO_MIN_PARAMS = 50_000_000
"""With ``lora: auto``, models at least this large train a LoRA adapter, smaller ones all weights."""


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft).

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (``alpha / r`` scales the update).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt, or ``all-linear``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = field(default="all-linear")


def resolve_model_path(model_path: str) -> str:
    """``builtin`` becomes the cached warm-up folder (built on first use); else the path."""
    if model_path == BUILTIN:
        from cepo.warmup import builtin_base

        return str(builtin_base())
    if not Path(model_path).is_dir():
        raise FileNotFoundError(
            f"model.model_path: {model_path!r} is not a folder (cepo never downloads weights; "
            "point it at a Hugging Face model folder, or use 'builtin')"
        )
    return model_path


def load_policy(
    model_path: str,
    lora: Literal["auto", "on", "off"] = "auto",
    lora_settings: LoraSettings | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
):
    """Load tokenizer and causal LM from ``model_path``; wrap in LoRA when asked.

    Returns:
        ``(policy, tokenizer, resolved_path)``.
    """
    path = resolve_model_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    n_params = sum(p.numel() for p in policy.parameters())
    use_lora = lora == "on" or (lora == "auto" and n_params >= LORA_AUTO_MIN_PARAMS)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if use_lora:
        from peft import LoraConfig, get_peft_model

        s = lora_settings or LoraSettings()
        policy = get_peft_model(
            policy,
            LoraConfig(
                r=s.r,
                lora_alpha=s.alpha,
                lora_dropout=s.dropout,
                target_modules=s.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    log.info("policy %s: %.2fM parameters, LoRA %s", path, n_params / 1e6, "on" if use_lora else "off")
    return policy, tokenizer, path


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")

"""LoRA adapters (peft): settings, wrapping, and telling an adapter-wrapped model apart."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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


def is_peft(model: torch.nn.Module) -> bool:
    """Whether ``model`` is wrapped in a peft adapter (so ``disable_adapter()`` gives the base)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def wrap(model: torch.nn.Module, settings: LoraSettings | None = None) -> torch.nn.Module:
    """``model`` with a trainable LoRA adapter (the base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    s = settings or LoraSettings()
    config = LoraConfig(
        r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=s.target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model with the adapter merged in (a copy; ``model`` keeps training), or ``model``."""
    if not is_peft(model):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()

"""Sums and maxima across processes (no-ops without an initialised process group)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_sum(value: float, device: torch.device) -> float:
    """``value`` summed over every process."""
    if not initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def global_max(value: int, device: torch.device) -> int:
    """The largest ``value`` over every process."""
    if not initialized():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())

"""Sums and maxima across processes (no-ops without an initialised process group)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


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


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every process."""
    if not initialized():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def normaliser(mask: torch.Tensor, loss_agg: str, world_size: int, device: torch.device) -> float:
    """The loss normaliser of a mini-batch: its tokens (``token_mean``) or rows (``seq_mean``)
    summed over every process, divided by the number of processes (DDP averages gradients)."""
    local = float(mask.sum()) if loss_agg == "token_mean" else float(mask.shape[0])
    return global_sum(local, device) / world_size

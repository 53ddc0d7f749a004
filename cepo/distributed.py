"""Sums and maxima across processes (no-ops without an initialised process group), and the
stage a process is in, named when a collective fails.

The rule every multi-process path keeps (docs/scaling.md): every process enters the same
collectives in the same order, whatever its rows. No collective may depend on local data: a pass
a rank skips because it has no row to score, a check run once per model type, a value computed
on rank 0 only (``trainer.log_dir`` is a broadcast) all pair one rank's collective with another's
different one, and the run hangs or aborts. When a collective fails anyway (the process group's
timeout, ``--dist_timeout``, or a peer that died), :func:`failure` turns the error into one line
naming the stage each process was in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

_stages: list[str] = []
timeout_s: float | None = None  # the process group's timeout (set by the CLI), named in the error line


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name what this process is doing for the duration (nested stages are joined with ``>``);
    an exception raised inside carries the innermost stage as ``cepo_stage``."""
    _stages.append(name)
    try:
        yield
    except BaseException as err:
        if getattr(err, "cepo_stage", None) is None:
            try:
                err.cepo_stage = current_stage()
            except AttributeError:  # exceptions that take no attributes
                pass
        raise
    finally:
        _stages.pop()


def current_stage() -> str:
    """What this process is doing (``start-up`` outside every named stage)."""
    return " > ".join(_stages) or "start-up"


def set_stage(name: str | None) -> None:
    """Replace the outermost stage (hooks that have no ``with`` block: a step, a validation)."""
    if _stages and name is None:
        _stages.clear()
    elif name is not None:
        _stages[:1] = [name]


_MARKS = ("gloo", "nccl", "timed out", "connection reset", "connection closed", "broken pipe")


def failure(err: BaseException) -> str | None:
    """One line for a failed collective (None: ``err`` is not one).

    A collective that timed out means the processes waited for each other at different points:
    a collective that only some processes entered, or a process that stopped or is still busy.
    """
    if not isinstance(err, RuntimeError):
        return None
    text = str(err).lower()
    # torch's own distributed errors, or a backend's message while a process group exists
    if not (isinstance(err, getattr(dist, "DistError", ())) or (initialized() and any(m in text for m in _MARKS))):
        return None
    where = getattr(err, "cepo_stage", None) or current_stage()
    who = f"process {rank()}" if initialized() else "a process"
    if "timed out" in text or "timeout" in text:
        limit = f"{timeout_s:g} s (--dist_timeout)" if timeout_s else "the process group's timeout (--dist_timeout)"
        return (
            f"{who} waited more than {limit} for the other processes at stage '{where}': a collective that "
            "only some processes entered, or a process that stopped or is still busy (docs/scaling.md)"
        )
    return (
        f"{who} lost the other processes at stage '{where}': another process stopped, or ran a different "
        "collective (docs/scaling.md)"
    )


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if initialized() else 1


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

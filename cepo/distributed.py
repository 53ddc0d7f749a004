"""Working across processes: sums and maxima (no-ops without an initialised process group), the
stage a process is in (named when a collective fails), and sharding the policy with FSDP2.

The rule every multi-process path keeps (docs/scaling.md): every process enters the same
collectives in the same order, whatever its rows. No collective may depend on local data: a pass
a rank skips because it has no row to score, a check run once per model type, a value computed
on rank 0 only (``trainer.log_dir`` is a broadcast) all pair one rank's collective with another's
different one, and the run hangs or aborts. When a collective fails anyway (the process group's
timeout, ``--dist_timeout``, or a peer that died), :func:`failure` turns the error into one line
naming the stage each process was in.

Sharding with FSDP2 (``torch.distributed.fsdp.fully_shard``) is used under Lightning's
``ModelParallelStrategy`` (``configs/scale/fsdp.yaml``, ``cpu_fsdp.yaml``): :func:`shard` applies
``fully_shard`` to every decoder layer (the model's ``_no_split_modules`` classes, the auto-wrap
policy) and then to the whole policy. Under FSDP every forward pass of the
policy all-gathers parameters, a collective that every rank must join, so:

- training forward/backward passes are matched across ranks: a rank with fewer loss-carrying
  micro-batches runs :func:`zero_loss` forward passes (a zero loss through the model), as under DDP;
- every no-grad pass (rollout generation with the transformers engine, old log-probs, evidence,
  teachers, the vLLM probe) runs inside :func:`gathered`: one all-gather of every layer when
  entered, by every rank, then no collective until it exits. Peak parameter memory is then the
  full model's: FSDP here shards gradients and optimizer state (the bulk with full fine-tuning),
  not the parameters of the no-grad passes.

Without sharded modules every sharding function here is the plain single-process / DDP behaviour.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Iterator

import torch
import torch.distributed as dist

_stages: list[str] = []
timeout_s: float | None = None  # the collectives' timeout, --dist_timeout (set by the CLI), named in the error line
startup_s: float | None = None  # the timeout of joining and loading, until apply_timeout (set by the CLI)
_applied = False


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
        if startup_s and not _applied and startup_s != timeout_s:
            limit = f"{startup_s:g} s (the start-up timeout: the longer of --dist_timeout and its default)"
        else:
            limit = f"{timeout_s:g} s (--dist_timeout)" if timeout_s else "the process group's timeout (--dist_timeout)"
        return (
            f"{who} waited more than {limit} for the other processes at stage '{where}': a collective that "
            "only some processes entered, or a process that stopped or is still busy (docs/scaling.md)"
        )
    return (
        f"{who} lost the other processes at stage '{where}': another process stopped, or ran a different "
        "collective (docs/scaling.md)"
    )


def set_timeouts(collectives: float, startup: float) -> None:
    """The run's timeouts (``cepo.cli``): ``collectives`` (``--dist_timeout``) once
    :func:`apply_timeout` has run, ``startup`` (the process group's own) until then."""
    global timeout_s, startup_s, _applied
    timeout_s, startup_s, _applied = collectives, startup, False


def apply_timeout() -> None:
    """Give the process group's collectives the ``--dist_timeout`` (:data:`timeout_s`) once every process
    has joined and loaded the policy. Start-up ran under a timeout no shorter than the default
    (``cepo.cli``), so that a short ``--dist_timeout`` bounds the run's collectives, not how long the
    last process takes to start on a loaded machine."""
    global _applied
    if initialized() and timeout_s is not None:
        from torch.distributed.distributed_c10d import _set_pg_timeout

        _set_pg_timeout(datetime.timedelta(seconds=timeout_s))
        _applied = True


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


# -- FSDP2 sharding ---------------------------------------------------------------------------
def fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` that ``fully_shard`` was applied to (empty: not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(fsdp_modules(model))


def is_fsdp_class(cls: type) -> bool:
    """Whether ``cls`` is FSDP2's ``FSDPModule`` or a class ``fully_shard`` made from it (a sharded
    module's class is a subclass of both ``FSDPModule`` and the module's own class)."""
    from torch.distributed.fsdp import FSDPModule

    return issubclass(cls, FSDPModule)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose class names the Hugging Face model lists in ``_no_split_modules`` (its
    decoder layers, and the vision blocks of a vision-language model): FSDP's units."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root, over the data-parallel dimension of
    ``mesh`` (``ModelParallelStrategy``'s device mesh), in place.

    Raises:
        ValueError: a tensor-parallel dimension larger than 1 (cepo shards data-parallel only), or
            a model that names no decoder layer classes (``_no_split_modules``).
    """
    from torch.distributed.fsdp import fully_shard

    names = getattr(mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
        raise ValueError(
            "trainer.strategy.init_args.tensor_parallel_size must be 1 (cepo shards the policy data-parallel "
            f"with FSDP2; tensor parallelism is not implemented), got {mesh['tensor_parallel'].size()}"
        )
    if "data_parallel" in names:
        mesh = mesh["data_parallel"]
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"trainer.strategy: FSDP needs the decoder layer classes of {type(model).__name__} "
            "(its _no_split_modules is empty)"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Every sharded layer of ``model`` unsharded for the duration (one all-gather each, by every
    rank, when entered), so that no-grad passes inside run no collective; a no-op for an unsharded
    model and when already inside. Not for passes that backpropagate (:func:`release` first)."""
    mods = fsdp_modules(model)
    if not mods or getattr(model, "_cepo_gathered", False):
        yield
        return
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    model._cepo_gathered = True
    try:
        yield
    finally:
        release(model)


def release(model: torch.nn.Module) -> None:
    """Back to sharded parameters (ends :func:`gathered` early; no collective, a no-op otherwise)."""
    if not getattr(model, "_cepo_gathered", False):
        return
    for m in fsdp_modules(model):
        m.reshard()
        m.set_reshard_after_forward(True, recurse=False)
    model._cepo_gathered = False


def policy_gathered(method):
    """Runs a method of an object with a ``policy`` inside :func:`gathered` of that policy."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with gathered(self.policy):
            return method(self, *args, **kwargs)

    return wrapper


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss that is exactly 0 and reaches every trainable parameter: what a rank backpropagates
    to match another rank's extra micro-batch (DDP and FSDP reduce gradients at every backward).
    Under FSDP it is a one-token forward pass (the all-gathers and reduce-scatters must match);
    otherwise no forward is needed."""
    if is_sharded(model):
        device = next(model.parameters()).device
        logits = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device)).logits
        return logits.sum() * 0.0
    return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``, returning the total norm as a plain tensor (under FSDP
    the norm of the sharded gradients is a replicated ``DTensor``: a collective, on every rank)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every sharded tensor gathered whole, on every rank (a collective
    under FSDP: every rank must call it); detached copies either way."""
    from torch.distributed.tensor import DTensor

    out = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        out[key] = value.full_tensor() if isinstance(value, DTensor) else value.clone()
    return out

"""Sharding the policy with FSDP2 (``torch.distributed.fsdp.fully_shard``) and working with it.

Used under Lightning's ``ModelParallelStrategy`` (``configs/scale/fsdp.yaml``, ``cpu_fsdp.yaml``):
:func:`shard` applies ``fully_shard`` to every decoder layer (the model's ``_no_split_modules``
classes, the auto-wrap policy) and then to the whole policy. Under FSDP every forward pass of the
policy all-gathers parameters, a collective that every rank must join, so:

- training forward/backward passes are matched across ranks: a rank with fewer loss-carrying
  micro-batches runs :func:`zero_loss` forward passes (a zero loss through the model), as under DDP;
- every no-grad pass (rollout generation with the transformers engine, old log-probs, evidence,
  teachers, the vLLM probe) runs inside :func:`gathered`: one all-gather of every layer when
  entered, by every rank, then no collective until it exits. Peak parameter memory is then the
  full model's: FSDP here shards gradients and optimizer state (the bulk with full fine-tuning),
  not the parameters of the no-grad passes.

Without sharded modules every function here is the plain single-process / DDP behaviour.
"""

from __future__ import annotations

import contextlib
import functools

import torch


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

"""Teacher weights: which parameters a teacher pass (or the KL reference) runs with.

Chosen in YAML by ``class_path`` (paper Table 4; SDPO's EMA teacher):

- :class:`Live`: the current actor (no copy);
- :class:`Base`: the initial policy, via the LoRA adapter switched off, or a frozen copy;
- :class:`Synced`: a frozen copy refreshed from the actor every ``every`` rollout steps;
- :class:`EMA`: a frozen copy moved towards the actor after every step,
  ``theta_T <- (1 - tau) theta_T + tau theta_S``.

A strategy is bound to the policy once (:meth:`TeacherWeights.setup`), gives the model to run
in a ``with`` block (:meth:`TeacherWeights.model`), advances after each rollout step
(:meth:`TeacherWeights.on_step_end`) and checkpoints its copy (``state_dict``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from cepo import distributed
from cepo.lora import is_peft


def frozen_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """A no-grad copy of ``policy`` in eval mode.

    An FSDP2-sharded policy cannot be deep-copied: the copy is then an unsharded model of the
    same class holding the gathered weights on every process (a collective: every process calls
    this), so that its no-grad passes run no collective, as the policy's do inside
    :func:`~cepo.distributed.gathered`.
    """
    if distributed.is_sharded(policy):
        cls = next(c for c in type(policy).__mro__ if not distributed.is_fsdp_class(c))
        twin = cls(policy.config).to(device=next(policy.parameters()).device, dtype=policy.dtype)
        twin.load_state_dict(distributed.full_state_dict(policy))
    else:
        twin = copy.deepcopy(policy)
    twin.eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def policy_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights as whole tensors (gathered under FSDP: every process calls this)."""
    return distributed.full_state_dict(policy) if distributed.is_sharded(policy) else policy.state_dict()


class TeacherWeights:
    """Base class: the weights a no-grad teacher pass runs with.

    Attributes:
        keeps_copy: the strategy runs a frozen copy of the policy, made in :meth:`setup`.
    """

    keeps_copy = False

    def __init__(self) -> None:
        self.policy: torch.nn.Module | None = None
        self.copy: torch.nn.Module | None = None

    def setup(self, policy: torch.nn.Module) -> None:
        """Bind to the trained policy (once it exists); make a copy if the strategy keeps one."""
        self.policy = policy
        if self.keeps_copy:
            self.copy = frozen_copy(policy)

    @contextlib.contextmanager
    def model(self) -> Iterator[torch.nn.Module]:
        """The model to run inside the ``with`` block."""
        yield self.copy if self.copy is not None else self.policy

    def on_step_end(self, rl_step: int) -> None:
        """After rollout step ``rl_step`` (1-based) has updated the policy."""

    def state_dict(self) -> dict:
        return {} if self.copy is None else {"copy": self.copy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.copy is not None and "copy" in state:
            self.copy.load_state_dict(state["copy"])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("policy", "copy"))
        return f"{type(self).__name__}({fields})"


class Live(TeacherWeights):
    """The current actor: the teacher moves with every optimizer update (the paper's default)."""


class Base(TeacherWeights):
    """The initial policy: the LoRA adapter switched off, or a frozen copy of a fully trained model."""

    def setup(self, policy: torch.nn.Module) -> None:
        super().setup(policy)
        if not is_peft(policy):
            self.copy = frozen_copy(policy)

    @contextlib.contextmanager
    def model(self) -> Iterator[torch.nn.Module]:
        if self.copy is not None:
            yield self.copy
            return
        with self.policy.disable_adapter():
            yield self.policy


class Reference(Base):
    """The initial policy as the reference of the KL term and of ``reference`` evidence (not a
    teacher: the module keeps it only when one of those reads it)."""


class Synced(TeacherWeights):
    """A frozen copy of the actor, refreshed every ``every`` rollout steps.

    Args:
        every: refresh period in rollout steps (the paper: 25).
    """

    keeps_copy = True

    def __init__(self, every: int = 25) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"Synced.every must be >= 1, got {every}")
        self.every = every

    @torch.no_grad()
    def on_step_end(self, rl_step: int) -> None:
        if rl_step % self.every == 0:
            self.copy.load_state_dict(policy_state(self.policy))


class EMA(TeacherWeights):
    """An exponential moving average of the actor, updated after every rollout step.

    Args:
        tau: rate, ``theta_T <- (1 - tau) theta_T + tau theta_S`` (SDPO: 0.05).
    """

    keeps_copy = True

    def __init__(self, tau: float = 0.05) -> None:
        super().__init__()
        if not 0 < tau <= 1:
            raise ValueError(f"EMA.tau must be in (0, 1], got {tau}")
        self.tau = tau

    @torch.no_grad()
    def on_step_end(self, rl_step: int) -> None:
        if distributed.is_sharded(self.policy):
            state = policy_state(self.policy)
            for name, t in self.copy.named_parameters():
                t.lerp_(state[name].to(t.dtype), self.tau)
            return
        for t, s in zip(self.copy.parameters(), self.policy.parameters()):
            t.lerp_(s.detach(), self.tau)

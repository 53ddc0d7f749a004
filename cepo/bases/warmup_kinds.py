"""The two kinds of built-in base the warm-up recipe (:mod:`cepo.bases.warmup`) makes.

Each kind is a frozen dataclass of its settings (every one of them keys the cache) plus the few
things that differ between kinds: the random model it starts from (:meth:`~WarmupKind.build_model`),
the task it imitates (:meth:`~WarmupKind.build_task`), the loss of a batch
(:meth:`~WarmupKind.loss`) and when it stops (:meth:`~WarmupKind.stop`). The loop, the checks, the
saving and the cache are the recipe's, the same for both.

- :class:`WarmupConfig`: the text bases (``builtin``, ``builtin-filler``), a ~1M-parameter Llama
  on the arithmetic tasks, cached as ``base-<key>``;
- :class:`VLWarmupConfig`: the vision-language base (``builtin-vl``), a ~0.2M-parameter Qwen2-VL
  on :class:`~cepo.tasks.visual.VisualArithmetic`, cached as ``vl-base-<key>``; its vision tower
  trains here (reinforcement learning then keeps it frozen by default).

A kind's cache key must never change for settings it already had: published bases and the
results measured on them are found by it (``tests/test_warmup.py`` pins them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from cepo.bases.tiny import build_tiny, build_tiny_vl
from cepo.bases.warmup_target import TargetStop
from cepo.scoring import Packed
from cepo.scoring.logprobs import response_logits, token_logprobs
from cepo.tasks import Arithmetic, FillerArithmetic, Task
from cepo.tasks.visual import VisualArithmetic


@dataclass(frozen=True)
class WarmupKind:
    """The settings every kind has; a kind adds its own (``lr_warmup_steps``, ``lr_decay_steps``
    and ``max_new_tokens`` at least, as settings or constants) and the methods the recipe calls.

    Attributes:
        target_accuracy: stop at the first check whose greedy validation accuracy reaches this.
        max_steps: stop here regardless.
        check_every: optimizer steps between accuracy checks (far from the target, for a kind
            that checks more often near it).
        check_size: validation problems per check.
        batch_size: examples per optimizer step.
        lr: AdamW learning rate (after a linear ramp over ``lr_warmup_steps``).
        hint_fraction: share of examples shown with the answer in context first.
        seed: seed of initialisation and data order.
        task_seed: seed of the task's splits.
    """

    target_accuracy: float = 0.3
    max_steps: int = 4000
    check_every: int = 100
    check_size: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    hint_fraction: float = 0.5
    seed: int = 0
    task_seed: int = 1234

    prefix: ClassVar[str]
    """The cache folder's name before the key."""
    version: ClassVar[int] = 1
    """Bump when the kind's recipe changes so stale cached bases are not reused."""
    unkeyed: ClassVar[dict] = {}
    """Settings added after bases were published: left out of the key at these values, so the
    bases made before they existed keep their folder names."""

    def key(self) -> str:
        """The hash of the settings that names the cache folder."""
        fields = {k: v for k, v in asdict(self).items() if self.unkeyed.get(k, object()) != v}
        blob = json.dumps({"v": self.version, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def folder(self) -> str:
        return f"{self.prefix}-{self.key()}"

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier at optimizer step ``step`` (from 0): a linear ramp over
        ``lr_warmup_steps``, then (``lr_decay_steps`` > 0) a linear decay to 10%, then constant."""
        ramp = min(1.0, (step + 1) / self.lr_warmup_steps)
        if not self.lr_decay_steps:
            return ramp
        done = min(1.0, max(0, step + 1 - self.lr_warmup_steps) / self.lr_decay_steps)
        return ramp * (1.0 - 0.9 * done)

    def build_model(self, path: Path) -> None:
        """Save the randomly initialised model (and its tokenizer) the warm-up starts from."""
        raise NotImplementedError

    def build_task(self) -> Task:
        """The task whose reference solutions the base imitates and is checked on."""
        raise NotImplementedError

    def loss(self, policy: torch.nn.Module, rows: Packed) -> torch.Tensor:
        """The mean next-token cross-entropy of ``rows``' response tokens (each kind computes it
        as its published bases were trained: the two ways differ in the gradient's last bits)."""
        raise NotImplementedError

    def stop(self) -> TargetStop:
        """The checks of the greedy accuracy and the decision to stop."""
        raise NotImplementedError


WARMUP_TASKS: dict[str, type[Arithmetic]] = {"arithmetic": Arithmetic, "filler": FillerArithmetic}
"""The task each ``WarmupConfig.task`` names."""


@dataclass(frozen=True)
class WarmupConfig(WarmupKind):
    """Settings of the built-in text warm-up (all of them key the cache).

    Attributes:
        lr_warmup_steps: linear learning-rate warm-up.
        lr_decay_steps: after the warm-up, decay the learning rate linearly to 10% over this
            many steps, then hold it (0: constant).
        task: which built-in task the base learns: ``arithmetic`` (:class:`~cepo.tasks.Arithmetic`,
            the ``builtin`` base) or ``filler`` (:class:`~cepo.tasks.FillerArithmetic`, the
            ``builtin-filler`` base), at its defaults.
        max_new_tokens: response length of the greedy accuracy checks.
    """

    lr_warmup_steps: int = 50
    lr_decay_steps: int = 0
    task: Literal["arithmetic", "filler"] = "arithmetic"
    max_new_tokens: int = 40

    prefix: ClassVar[str] = "base"
    unkeyed: ClassVar[dict] = {"lr_decay_steps": 0, "task": "arithmetic", "max_new_tokens": 40}

    def build_model(self, path: Path) -> None:
        build_tiny(path, seed=self.seed)

    def build_task(self) -> Task:
        return WARMUP_TASKS[self.task](seed=self.task_seed)  # the built-in task at its defaults

    def loss(self, policy: torch.nn.Module, rows: Packed) -> torch.Tensor:
        ids, attn, start, mask = rows.input_ids, rows.attention_mask, rows.start, rows.mask
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = policy(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
        logits = logits[:, start - 1 : -1]
        return torch.nn.functional.cross_entropy(logits[mask], ids[:, start:][mask])

    def stop(self) -> TargetStop:
        # a check every check_every steps, stop at the first at the target: no near-target checks,
        # no rewind (the published text bases were made so)
        return TargetStop(self.target_accuracy, 0.0, self.check_every, self.check_every, self.max_steps)


@dataclass(frozen=True)
class VLWarmupConfig(WarmupKind):
    """Settings of the built-in VL warm-up (all of them key the cache).

    Attributes:
        near_check_every: optimizer steps between checks once a check came within
            ``near_margin`` of the target, so the stop overshoots by at most what these steps
            gain (:mod:`cepo.bases.warmup_target`).
        near_margin: how far below the target a check counts as near it.
        tolerance: a stopping check more than this above the target re-checks the copies of the
            weights made every ``near_check_every`` steps since the previous check, and the base
            is the one closest to the target (:class:`~cepo.bases.warmup_target.TargetStop`).
            0.05 is a third of ``near_margin``, about 1.5 times a check's sampling error at 30%.
    """

    max_steps: int = 3000
    near_check_every: int = 10
    near_margin: float = 0.15
    tolerance: float = 0.05

    prefix: ClassVar[str] = "vl-base"
    # fixed for this kind: settings here would have to stay out of the key (``unkeyed``)
    lr_warmup_steps: ClassVar[int] = 50
    lr_decay_steps: ClassVar[int] = 0
    max_new_tokens: ClassVar[int] = 16

    def build_model(self, path: Path) -> None:
        build_tiny_vl(path, seed=self.seed)

    def build_task(self) -> Task:
        return VisualArithmetic(seed=self.task_seed)

    def loss(self, policy: torch.nn.Module, rows: Packed) -> torch.Tensor:
        ids, start = rows.input_ids, rows.start
        inputs = rows.model_inputs(policy, torch.arange(len(ids)))  # the images, multimodal positions
        logits = response_logits(policy, ids, rows.attention_mask, start, 1.0, inputs)
        return -token_logprobs(logits, ids[:, start:])[rows.mask].mean()

    def stop(self) -> TargetStop:
        near, near_every, tolerance = self.near_margin, self.near_check_every, self.tolerance
        return TargetStop(self.target_accuracy, near, self.check_every, near_every, self.max_steps, tolerance)

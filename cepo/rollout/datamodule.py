"""The rollout DataModule: prompts in, verified on-policy rollouts out.

The train DataLoader yields plain prompt batches from a *sized* dataset. Generation happens
in :meth:`RolloutDataModule.on_after_batch_transfer`, which Lightning calls for each batch
right before ``training_step``, i.e. after the previous optimizer step: prefetching a
batch of prompts is harmless, and every rollout batch is generated with the current
weights. The DataModule owns a :class:`~cepo.rollout.generator.RolloutGenerator`
(engine, verifier, sampling, packing) that the module connects to the policy once
(:meth:`RolloutDataModule.connect`); before generating, the sampler re-syncs the engine if
the policy's weight version moved.

With dynamic sampling (``dynamic_sampling``) or one-step-off rollouts (``one_step_off``) on, the
DataModule draws the prompts itself from a resumable :class:`~cepo.rollout.stream.PromptStream`
(refill rounds, the next batch while this one trains; :class:`~cepo.rollout.stream.StreamedRollouts`)
and the DataLoader yields step tickets.

Evaluation scores the task's held-out split, or, when ``benchmarks`` are named, one
validation DataLoader per benchmark, each verified by its own task; the DataModule's
:class:`~cepo.rollout.evaluator.Evaluator` (``evaluator``) holds those settings, draws and
verifies the answers, and builds the metrics and per-sample rows.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from cepo import distributed
from cepo.policy import PolicyRef
from cepo.prompts.formats import PromptFormat
from cepo.rewards import Reward, check_names
from cepo.rollout import checks
from cepo.rollout.dynamic import DynamicSampling
from cepo.rollout.engine import RolloutEngine, SamplingConfig
from cepo.rollout.evaluator import EvalBatch, EvalRows, Evaluator
from cepo.rollout.evaluator import eval_sampling as resolve_eval_sampling
from cepo.rollout.generator import RolloutGenerator
from cepo.rollout.hf_engine import HFEngine
from cepo.rollout.index_sampler import EpochLog, ResumableSampler
from cepo.rollout.one_step_off import OneStepOff
from cepo.rollout.stream import PromptStream, StreamedRollouts
from cepo.tasks import Arithmetic, Example, Task

RANK_SEED_STRIDE = 30_000_001  # sampling seeds of the processes of one run, apart


def _collate(rows: list[Example]) -> list[Example]:
    return rows


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[Example]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return self.rows[i]


@dataclasses.dataclass(frozen=True)
class DataLink:
    """The DataModule as the module sees it (:meth:`RolloutDataModule.link`).

    Attributes:
        prompts_per_step: prompts per rollout step (per process).
        max_staleness: rollout steps a training batch may lag the policy by.
        evaluator: held-out evaluation (its metrics, the benchmarks, ``k``).
        sampler: the rollout sampler (objectives that draw more samples use it).
        connect: binds the sampler's engine to the policy, once it exists.
    """

    prompts_per_step: int
    max_staleness: int
    evaluator: Evaluator
    sampler: object
    connect: object


class RolloutDataModule(L.LightningDataModule):
    """Owns the prompt splits, the rollout engine and the verifier.

    Args:
        task: where problems and the verifier come from (default: the built-in
            :class:`~cepo.tasks.Arithmetic`).
        engine: the rollout engine (default: :class:`~cepo.rollout.hf_engine.HFEngine`).
        prompts_per_step: prompts per rollout step (per process under DDP).
        group_size: rollouts per prompt ``G`` (at least 2).
        sampling: rollout sampling settings.
        success_threshold: a rollout with reward at or above this counts as correct.
        eval_split: the held-out split ``validate`` scores (``val`` or ``test``).
        eval_size: score only the first this many held-out problems (None: all; at least 1).
        eval_batch_size: prompts per evaluation generation call (at least 1).
        eval_k: sampled generations per held-out prompt for avg@k (0: greedy only).
        eval_sampling: how the held-out avg@k samples are drawn, and the length limit of the
            greedy answer too (None: temperature 1.0 with the training ``sampling``'s top-p,
            top-k, length and stop strings). ``configs/eval/paper.yaml`` has the CEPO paper's
            protocol. Its seed is offset like the training one.
        benchmarks: evaluation benchmarks, name -> task (e.g. ``cepo.tasks.Arithmetic`` or
            ``cepo.tasks.benchmarks.JsonlBenchmark``); when set, ``validate`` scores the
            ``eval_split`` of each (its first ``eval_size`` problems), verified by that task,
            and logs ``val/<name>/...`` plus the mean over benchmarks, instead of scoring
            ``task``. Names must be non-empty without ``/``. Evaluation prompts longer than
            the model's context less ``sampling.max_new_tokens`` keep only their last tokens
            (a warning says how many); training prompts are never cut (a warning, once). No
            room at all, or none of the first prompts fitting, is an error (:meth:`check_room`).
        prompt_format: how each problem's user turn becomes the text the policy continues, for
            training and every benchmark: ``cepo.prompts.Plain`` (as is, the default; base
            models) or ``cepo.prompts.Chat`` (the tokenizer's chat template, optional system
            prompt). Teacher contexts and correction prompts are rendered the same way.
        rewards: reward components summed with their weights (None: the task's own reward).
        dynamic_sampling: DAPO dynamic sampling (``max_rounds`` 0, the default: off): train on
            groups whose rewards differ, refilled from further prompts (docs/algorithms.md §9).
        one_step_off: generate the next step's rollouts in a background thread while this step
            trains, with a copy of the weights one rollout step old; needs ``model.tis_cap`` and
            no objective that appends rows (docs/algorithms.md §10). Default off.
    """

    def __init__(
        self,
        task: Task | None = None,
        engine: RolloutEngine | None = None,
        prompts_per_step: int = 16,
        group_size: int = 8,
        sampling: SamplingConfig | None = None,
        success_threshold: float = 1.0,
        eval_split: str = "val",
        eval_size: int | None = None,
        eval_batch_size: int = 250,
        eval_k: int = 4,
        eval_sampling: SamplingConfig | None = None,
        benchmarks: dict[str, Task] | None = None,
        prompt_format: PromptFormat | None = None,
        rewards: list[Reward] | None = None,
        dynamic_sampling: DynamicSampling | None = None,
        one_step_off: bool = False,
    ) -> None:
        super().__init__()
        if group_size < 2:
            raise ValueError(f"data.group_size must be >= 2 (GRPO compares rollouts), got {group_size}")
        if prompts_per_step < 1:
            raise ValueError(f"data.prompts_per_step must be >= 1, got {prompts_per_step}")
        check_names(list(rewards or []))
        for name in benchmarks or {}:
            if not name or "/" in name:
                raise ValueError(f"data.benchmarks names must be non-empty without '/', got {name!r}")
        self.task = task if task is not None else Arithmetic()
        self.benchmarks: dict[str, Task] = dict(benchmarks or {})
        self.engine = engine if engine is not None else HFEngine()
        self.prompts_per_step = prompts_per_step
        self.group_size = group_size
        sampling = sampling if sampling is not None else SamplingConfig()
        # Fold the run's global seed (set by seed_everything before instantiation) into the
        # sampling seed: otherwise runs that differ only in seed_everything sample identically.
        run_seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        self.sampling = dataclasses.replace(sampling, seed=sampling.seed + 1_000_003 * run_seed)
        self.success_threshold = success_threshold
        # the setting that limits evaluation's new tokens, for messages
        self.eval_length_setting = f"data.{'eval_' if eval_sampling is not None else ''}sampling.max_new_tokens"
        self.eval_sampling = resolve_eval_sampling(eval_sampling, self.sampling, run_seed)
        tasks = self.benchmarks or {"": self.task}
        self.evaluator = Evaluator(tasks, eval_split, eval_size, eval_batch_size, eval_k, self.eval_sampling)
        args = (self.task, self.sampling, group_size, success_threshold, prompt_format, rewards)
        self.sampler = RolloutGenerator(self.engine, *args)
        self.prompt_format, self.rewards = self.sampler.prompt_format, self.sampler.rewards
        self.dynamic_sampling = dynamic_sampling if dynamic_sampling is not None else DynamicSampling()
        self.one_step_off = bool(one_step_off)
        self.background: OneStepOff | None = None  # the one-step-off generator
        if one_step_off:  # its own engine (set up on a copy of the policy) and sampler
            self.background = OneStepOff(RolloutGenerator(copy.deepcopy(self.engine), *args))
        self.streaming: StreamedRollouts | None = None  # the prompts, when the DataModule draws them
        if self.dynamic_sampling.enabled or self.background is not None:
            seed = self.sampling.seed + 20_000_003
            self.streaming = StreamedRollouts(prompts_per_step, seed, self.dynamic_sampling, self.background)
        self.served = 0  # training batches handed to the module
        self.epoch_log = EpochLog()  # the training sampler's epochs and where to resume
        self._fitting = False  # set by check_train: the training prompts must fit the context too

    # -- data -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load (and so validate) every split this stage needs, before any training."""
        if stage == "fit":
            world = self.trainer.world_size if self.trainer is not None else 1
            self.check_train(world)
        self.evaluator.check_rows()

    def check_train(self, world_size: int = 1) -> None:
        """The training split holds at least one step's prompts on each of ``world_size``
        processes (else the epoch has no batch and nothing trains). ``cepo fit`` calls this
        before anything runs or is written; ``setup("fit")`` again."""
        rows = self.task.split("train")
        if not rows:
            raise ValueError("the task has no training split (no training prompts)")
        need = self.prompts_per_step * world_size
        if not self.streamed and len(rows) < need:
            per = f" x {world_size} processes" if world_size > 1 else ""
            raise ValueError(
                f"the training split has {len(rows)} prompts, fewer than one step's data.prompts_per_step "
                f"({self.prompts_per_step}{per}): no step would train; lower data.prompts_per_step"
            )
        if not self._fitting:
            self._fitting = True
            if self.sampler.policy is not None:  # connected by an earlier validate
                self.check_room(self.sampler.policy)

    def check_images(self, has_vision: bool, model: str = "the policy", fit: bool = True) -> None:
        """Rows that carry images need a policy with a vision tower (:func:`cepo.rollout.checks.check_images`):
        the training split's (``fit``) and each held-out split's first rows."""
        splits = [("train", self.task.split("train"))] if fit else []
        split = self.evaluator.split
        splits += [(f"{split} ({name or 'task'})", self.eval_rows(task)) for name, task in self.eval_tasks().items()]
        checks.check_images(splits, has_vision, model)

    def _budgets(self) -> list[checks.Budget]:
        """The new-token limits of evaluation, and of training too once a fit is known to come."""

        def eval_rows() -> list[Example]:
            return [e for task in self.eval_tasks().values() for e in self.eval_rows(task)[: checks.CHECKED_ROWS]]

        def train_rows() -> list[Example]:
            return list(self.task.split("train")[: checks.CHECKED_ROWS])

        budgets = [checks.Budget(self.eval_length_setting, self.eval_sampling, "evaluation", eval_rows)]
        if self._fitting:
            budgets.append(checks.Budget("data.sampling.max_new_tokens", self.sampling, "training", train_rows))
        return budgets

    def check_budget(self, model_context: int | None, model: str) -> None:
        """The context less each new-token limit leaves room for a prompt (:func:`cepo.rollout.checks.check_budget`).
        Needs only the model's context, so ``cepo`` runs it before the model loads where it can."""
        checks.check_budget(self._budgets(), checks.context_limit(self.engine, model_context, model))

    def check_room(self, policy: PolicyRef) -> None:
        """The policy's context less the new tokens leaves room for the prompts: no room at all,
        or none for any of the first prompts checked, is an error naming both; some prompts too
        long, a warning (:func:`cepo.rollout.checks.check_room`)."""
        model_context = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None)
        model_context = model_context if isinstance(model_context, int) and model_context > 0 else None
        self.check_budget(model_context, policy.path)
        limit = checks.context_limit(self.engine, model_context, policy.path)
        if checks.check_room(self._budgets(), limit, self.prompt_format, policy.tokenizer):
            self.sampler.warned_long = True  # said there, not again at the first rollout

    # -- evaluation (the evaluator's, named as the DataModule's settings) ------------------
    @property
    def eval_k(self) -> int:
        """Sampled generations per held-out prompt."""
        return self.evaluator.k

    @property
    def benchmark_names(self) -> list[str]:
        """The benchmark names in DataLoader order (empty without ``benchmarks``)."""
        return self.evaluator.names

    def eval_tasks(self) -> dict[str, Task]:
        """The tasks scored by ``validate``, in DataLoader order (the task alone, named "")."""
        return dict(self.evaluator.tasks)

    def eval_task(self, dataloader_idx: int = 0) -> Task:
        """The task whose held-out split validation DataLoader ``dataloader_idx`` serves."""
        return self.evaluator.task(dataloader_idx)

    def eval_rows(self, task: Task | None = None) -> list[Example]:
        """The held-out problems of ``task`` (default: the training task) that are scored."""
        return self.evaluator.rows(task if task is not None else self.task)

    def evaluate(self, examples: list[Example], task: Task | None = None) -> EvalBatch:
        """Greedy answer plus ``eval_k`` samples per held-out prompt, verified by ``task``."""
        return self.evaluator.evaluate(self.sampler, examples, task if task is not None else self.task)

    @property
    def streamed(self) -> bool:
        """Whether the DataModule draws training prompts itself (the DataLoader yields tickets)."""
        return self.streaming is not None

    @property
    def stream(self) -> PromptStream | None:
        """The training prompts' stream, when the DataModule draws them (once training started)."""
        return self.streaming.stream if self.streaming is not None else None

    @property
    def max_staleness(self) -> int:
        """Rollout steps a training batch may lag the policy by (1 with one-step-off, else 0)."""
        return int(self.background is not None)

    @property
    def _root_device(self):
        """Where the training sampler broadcasts its seed (None without a trainer)."""
        return self.trainer.strategy.root_device if self.trainer is not None else None

    def train_dataloader(self) -> DataLoader:
        rows = _Rows(self.task.split("train"))
        shard = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        if self.streamed:
            if shard.get("num_replicas", 1) > 1:  # the prompt stream is not split across ranks (yet)
                raise ValueError("data.dynamic_sampling / data.one_step_off: one training process only")
            self.streaming.start(rows.rows)
            tickets = _Rows(list(range(max(len(rows) // self.prompts_per_step, 1))))
            return DataLoader(tickets, batch_size=1, collate_fn=_collate)
        return DataLoader(
            rows,
            batch_size=self.prompts_per_step,
            sampler=ResumableSampler(len(rows), self.epoch_log, lambda: self.served, self._root_device, **shard),
            drop_last=True,
            collate_fn=_collate,
        )

    # -- exact resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that decides the next rollouts: the data order and position, the engine's
        draw counter, and the global random streams (saved with every checkpoint)."""
        state = {
            "served": self.served,
            **self.evaluator.state_dict(),
            "epochs": list(self.epoch_log.epochs),
            "engine": self.engine.state_dict(),
            "rng": {  # plain types: LightningCLI reads checkpoints with weights_only
                "torch": torch.get_rng_state(),
                "python": list(random.getstate()[1]),
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                "numpy_pos": int(np.random.get_state()[2]),
            },
        }
        if self.streaming is not None:  # the prompt stream's position, the background engine's counter
            state.update(self.streaming.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.served = state.get("served", 0)
        self.evaluator.load_state_dict(state)
        self.epoch_log.restore(state.get("epochs", []), self.served, self.prompts_per_step)
        self.engine.load_state_dict(state.get("engine", {}))
        if self.streaming is not None:
            self.streaming.load_state_dict(state)
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate((3, tuple(rng["python"]), None))
            np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"]))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One DataLoader per benchmark (Lightning passes ``dataloader_idx``), else one."""
        loaders = self.evaluator.dataloaders()
        return loaders if self.benchmarks else loaders[0]

    # -- generation -------------------------------------------------------------------
    def link(self) -> DataLink:
        """What the module reads of the DataModule, handed over once (``RLModule.setup``)."""
        return DataLink(self.prompts_per_step, self.max_staleness, self.evaluator, self.sampler, self.connect)

    def connect(self, policy: PolicyRef) -> None:
        """Connect the rollout sampler to the policy (the module calls this once it exists).

        Under DDP/FSDP each process samples with its own seed (rank 0 keeps the one-process one):
        with the same seed the ranks' rollouts would share their random draws.
        """
        self.check_images(policy.vision is not None, policy.path, self._fitting)
        self.check_room(policy)  # before the engine loads the policy
        seed = self.sampling.seed + RANK_SEED_STRIDE * distributed.rank()
        self.sampler.sampling = dataclasses.replace(self.sampling, seed=seed)
        self.sampler.connect(policy)
        if self.background is not None:
            self.background.connect(policy)

    def on_after_batch_transfer(self, batch: list[Example] | EvalRows, dataloader_idx: int = 0) -> object:
        if self.trainer.training:
            distributed.set_stage(f"rollout step {self.served + 1}")
        with distributed.stage("weight sync and generation"):
            return self._generate(batch, dataloader_idx)

    def _generate(self, batch: list[Example] | EvalRows, dataloader_idx: int) -> object:
        self.sampler.sync()
        if self.trainer.training:
            self.served += 1
            if self.streaming is None:
                return self.sampler.rollout(batch)
            return self.streaming.next(self.sampler)
        return self.evaluator.isolated(self.sampler, batch, dataloader_idx)

    def teardown(self, stage: str) -> None:
        """Stop a pending one-step-off batch; the draw state goes back to before its draws."""
        if self.streaming is not None:
            self.streaming.stop()

"""The rollout DataModule: prompts in, verified on-policy rollouts out.

The train DataLoader yields plain prompt batches from a *sized* dataset. Generation happens
in :meth:`RolloutDataModule.on_after_batch_transfer`, which Lightning calls for each batch
right before ``training_step``, i.e. after the previous optimizer step: prefetching a
batch of prompts is harmless, and every rollout batch is generated with the current
weights. The DataModule owns a :class:`~cepo.rollout.rollout_sampler.RolloutSampler`
(engine, verifier, sampling, packing) that the module connects to the policy once
(:meth:`RolloutDataModule.connect`); before generating, the sampler re-syncs the engine if
the policy's weight version moved.

With dynamic sampling (``dynamic_sampling``) or one-step-off rollouts (``one_step_off``) on, the
DataModule draws the prompts itself from a resumable :class:`~cepo.rollout.stream.PromptStream`
(refill rounds, the next batch while this one trains) and the DataLoader yields step tickets.

Evaluation scores the task's held-out split, or, when ``benchmarks`` are named, one
validation DataLoader per benchmark, each verified by its own task.
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
from cepo.prompting import PromptFormat
from cepo.rewards import Reward, check_names
from cepo.rollout.batch import RolloutBatch
from cepo.rollout.dynamic import DynamicSampling, dynamic_batch
from cepo.rollout.engine import RolloutEngine, SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.rollout.one_step_off import OneStepOff
from cepo.rollout.rollout_sampler import EvalBatch, RolloutSampler
from cepo.rollout.stream import PromptStream
from cepo.tasks import Arithmetic, Example, Task

RANK_SEED_STRIDE = 30_000_001  # sampling seeds of the processes of one run, apart
EVAL_CALLS_START = 1_000_000_007  # evaluations count their engine calls from here, far from training's


def _collate(rows: list[Example]) -> list[Example]:
    return rows


class ResumableSampler(torch.utils.data.DistributedSampler):
    """A shuffling sampler that can continue an epoch where a checkpoint left it.

    Each epoch's order is ``torch.randperm`` seeded with a seed drawn from the global RNG when the
    epoch starts, exactly as ``RandomSampler`` draws it (so a fresh run's order is the same as with
    ``shuffle=True``). The seeds and the number of batches served are kept by the DataModule; after
    a restore the interrupted epoch continues with its seed, past the batches already trained on.

    Under DDP/FSDP (``num_replicas`` processes) every process uses rank 0's seed and takes every
    ``num_replicas``-th problem of the order from its ``rank`` on (the last ``n % num_replicas``
    left out), so the processes roll out disjoint prompts even when their global random streams
    differ. Being a ``DistributedSampler``, Lightning leaves it in place.
    """

    def __init__(self, n: int, datamodule: RolloutDataModule, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.dm, self.num_replicas, self.rank = n, datamodule, num_replicas, rank
        self.epoch, self.shuffle, self.drop_last = 0, True, True

    def __len__(self) -> int:
        return self.n // self.num_replicas

    def __iter__(self):
        dm = self.dm
        skip = 0
        if dm._resume is not None:  # continue the checkpointed epoch
            seed, skip = dm._resume
            dm._resume = None
        else:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            if self.num_replicas > 1 and distributed.initialized():
                seed = distributed.broadcast_int(seed, dm.trainer.strategy.root_device)
            dm._epochs.append((seed, dm.served))
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(self.n, generator=generator)[: len(self) * self.num_replicas]
        yield from order[self.rank :: self.num_replicas].tolist()[skip:]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[Example]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return self.rows[i]


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
        eval_size: score only the first this many held-out problems (None: all).
        eval_batch_size: prompts per evaluation generation call.
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
            (a warning says how many); training prompts are never cut.
        prompt_format: how each problem's user turn becomes the text the policy continues, for
            training and every benchmark: ``cepo.prompting.Plain`` (as is, the default; base
            models) or ``cepo.prompting.Chat`` (the tokenizer's chat template, optional system
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
        if eval_k < 0:
            raise ValueError(f"data.eval_k must be >= 0, got {eval_k}")
        if eval_split not in ("val", "test"):
            raise ValueError(f"data.eval_split must be 'val' or 'test', got {eval_split!r}")
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
        self.eval_split = eval_split
        self.eval_size = eval_size
        self.eval_batch_size = eval_batch_size
        self.eval_k = eval_k
        if eval_sampling is None:
            self.eval_sampling = SamplingConfig(
                temperature=1.0,
                top_p=self.sampling.top_p,
                top_k=self.sampling.top_k,
                max_new_tokens=self.sampling.max_new_tokens,
                stop=list(self.sampling.stop),
                seed=self.sampling.seed + 10_000_019,
            )
        else:
            seed = eval_sampling.seed + 1_000_003 * run_seed + 10_000_019
            self.eval_sampling = dataclasses.replace(eval_sampling, seed=seed)
        self.sampler = RolloutSampler(
            self.engine,
            self.task,
            self.sampling,
            self.eval_sampling,
            group_size,
            success_threshold,
            prompt_format,
            rewards,
        )
        self.prompt_format, self.rewards = self.sampler.prompt_format, self.sampler.rewards
        self.dynamic_sampling = dynamic_sampling if dynamic_sampling is not None else DynamicSampling()
        self.one_step_off = bool(one_step_off)
        self.background: OneStepOff | None = None  # the one-step-off generator
        if one_step_off:  # its own engine (set up on a copy of the policy) and sampler
            args = (self.task, self.sampling, self.eval_sampling, group_size, success_threshold)
            self.background = OneStepOff(RolloutSampler(copy.deepcopy(self.engine), *args, prompt_format, rewards))
        self.stream: PromptStream | None = None  # the prompts, when the DataModule draws them
        self._stream_state: dict | None = None
        self.served = 0  # training batches handed to the module
        self.eval_calls = EVAL_CALLS_START  # the engine's call counter of evaluations (apart from training's)
        self._epochs: list[tuple[int, int]] = []  # (shuffle seed, batches served before it) per epoch
        self._resume: tuple[int, int] | None = None

    # -- data -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load (and so validate) every split this stage needs, before any training."""
        if stage == "fit" and not self.task.split("train"):
            raise ValueError("the task has no training split")
        for name, task in self.eval_tasks().items():
            if not self.eval_rows(task):
                where = f"benchmark {name!r}" if self.benchmarks else "the task"
                raise ValueError(f"{where} has no {self.eval_split!r} split to evaluate on")

    @property
    def benchmark_names(self) -> list[str]:
        """The benchmark names in DataLoader order (empty without ``benchmarks``)."""
        return list(self.benchmarks)

    def eval_tasks(self) -> dict[str, Task]:
        """The tasks scored by ``validate``, in DataLoader order (the task alone, named "")."""
        return dict(self.benchmarks) if self.benchmarks else {"": self.task}

    def eval_task(self, dataloader_idx: int = 0) -> Task:
        """The task whose held-out split validation DataLoader ``dataloader_idx`` serves."""
        return list(self.eval_tasks().values())[dataloader_idx]

    def eval_rows(self, task: Task | None = None) -> list[Example]:
        """The held-out problems of ``task`` (default: the training task) that are scored."""
        rows = (task if task is not None else self.task).split(self.eval_split)
        return rows[: self.eval_size] if self.eval_size else rows

    @property
    def streamed(self) -> bool:
        """Whether the DataModule draws training prompts itself (the DataLoader yields tickets)."""
        return self.dynamic_sampling.enabled or self.background is not None

    @property
    def max_staleness(self) -> int:
        """Rollout steps a training batch may lag the policy by (1 with one-step-off, else 0)."""
        return int(self.background is not None)

    def train_dataloader(self) -> DataLoader:
        rows = _Rows(self.task.split("train"))
        shard = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        if self.streamed:
            if shard.get("num_replicas", 1) > 1:  # the prompt stream is not split across ranks (yet)
                raise ValueError("data.dynamic_sampling / data.one_step_off: one training process only")
            self._train_rows = rows.rows
            if self.stream is None:
                self.stream = PromptStream(len(rows), self.sampling.seed + 20_000_003)
                self.stream.load_state_dict(self._stream_state or {})
            tickets = _Rows(list(range(max(len(rows) // self.prompts_per_step, 1))))
            return DataLoader(tickets, batch_size=1, collate_fn=_collate)
        return DataLoader(
            rows,
            batch_size=self.prompts_per_step,
            sampler=ResumableSampler(len(rows), self, **shard),
            drop_last=True,
            collate_fn=_collate,
        )

    # -- exact resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that decides the next rollouts: the data order and position, the engine's
        draw counter, and the global random streams (saved with every checkpoint)."""
        state = {
            "served": self.served,
            "eval_calls": self.eval_calls,
            "epochs": list(self._epochs),
            "engine": self.engine.state_dict(),
            "rng": {  # plain types: LightningCLI reads checkpoints with weights_only
                "torch": torch.get_rng_state(),
                "python": list(random.getstate()[1]),
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                "numpy_pos": int(np.random.get_state()[2]),
            },
        }
        if self.streamed:  # with a batch pending, the draw state from before its draws
            pending = self.background is not None and self.background.pending
            state.update(self.background.state_at_launch if pending else self._draw_state())
        return state

    def _draw_state(self) -> dict:
        """The prompt stream's position and the training engine's draw counter."""
        stream = self.stream.state_dict() if self.stream is not None else (self._stream_state or {})
        state = {"stream": dict(stream)}
        if self.background is not None:
            state["rollout_engine"] = self.background.sampler.engine.state_dict()
        return state

    def _load_draw_state(self, state: dict) -> None:
        self._stream_state = state.get("stream")
        if self.stream is not None:
            self.stream.load_state_dict(self._stream_state or {})
        if self.background is not None:
            self.background.sampler.engine.load_state_dict(state.get("rollout_engine", {}))

    def load_state_dict(self, state: dict) -> None:
        self.served = state.get("served", 0)
        self.eval_calls = state.get("eval_calls", EVAL_CALLS_START)
        self._epochs = [tuple(e) for e in state.get("epochs", [])]
        if self._epochs:  # the epoch in progress: its seed, and the rows already served
            seed, first = self._epochs[-1]
            self._resume = (seed, (self.served - first) * self.prompts_per_step)
        self.engine.load_state_dict(state.get("engine", {}))
        self._load_draw_state(state)
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate((3, tuple(rng["python"]), None))
            np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"]))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One DataLoader per benchmark (Lightning passes ``dataloader_idx``), else one."""
        loaders = [
            DataLoader(_Rows(self.eval_rows(task)), batch_size=self.eval_batch_size, collate_fn=_collate)
            for task in self.eval_tasks().values()
        ]
        return loaders if self.benchmarks else loaders[0]

    # -- generation -------------------------------------------------------------------
    def connect(self, policy: PolicyRef) -> None:
        """Connect the rollout sampler to the policy (the module calls this once it exists).

        Under DDP/FSDP each process samples with its own seed (rank 0 keeps the one-process one):
        with the same seed the ranks' rollouts would share their random draws.
        """
        seed = self.sampling.seed + RANK_SEED_STRIDE * distributed.rank()
        self.sampler.sampling = dataclasses.replace(self.sampling, seed=seed)
        self.sampler.connect(policy)
        if self.background is not None:
            self.background.connect(policy)

    def on_after_batch_transfer(self, batch: list[Example], dataloader_idx: int = 0) -> object:
        if self.trainer.training:
            distributed.set_stage(f"rollout step {self.served + 1}")
        with distributed.stage("weight sync and generation"):
            return self._generate(batch, dataloader_idx)

    def _generate(self, batch: list[Example], dataloader_idx: int) -> object:
        self.sampler.sync()
        if self.trainer.training:
            self.served += 1
            if not self.streamed:
                return self.sampler.rollout(batch)
            if self.background is None:
                return self.rollouts(self.sampler)
            return self.background.next(self.rollouts, self._draw_state)
        return self._isolated_evaluation(batch, self.eval_task(dataloader_idx))

    def _isolated_evaluation(self, batch: list[Example], task: Task) -> EvalBatch:
        """Evaluate with the engine's own evaluation counter and a forked global RNG, then put the
        training draw state back: an evaluation, scheduled or not, never changes what training
        draws, and it draws the same whether or not the run was resumed before it (the counter is
        checkpointed)."""
        training = self.engine.state_dict()
        self.engine.load_state_dict({"calls": self.eval_calls})
        try:
            with torch.random.fork_rng(devices=[]):
                return self.evaluate(batch, task)
        finally:
            self.eval_calls = self.engine.state_dict().get("calls", self.eval_calls)
            self.engine.load_state_dict(training)

    def rollouts(self, sampler: RolloutSampler) -> RolloutBatch:
        """One step's rollouts from the prompt stream, with ``sampler`` (dynamic sampling's
        rounds when it is on)."""

        def draw(n: int) -> list[Example]:
            return [self._train_rows[i] for i in self.stream.take(n)]

        if not self.dynamic_sampling.enabled:
            return sampler.rollout(draw(self.prompts_per_step))
        pad_id = sampler.tokenizer.pad_token_id
        return dynamic_batch(draw, sampler.rollout, self.prompts_per_step, self.dynamic_sampling.max_rounds, pad_id)

    def teardown(self, stage: str) -> None:
        """Stop a pending one-step-off batch; the draw state goes back to before its draws."""
        if self.background is not None and self.background.pending:
            state = self.background.state_at_launch
            self.background.wait()
            self._load_draw_state(state)

    def evaluate(self, examples: list[Example], task: Task | None = None) -> EvalBatch:
        """Greedy answer plus ``eval_k`` samples per held-out prompt, verified by ``task``."""
        return self.sampler.evaluate(examples, task, self.eval_k)

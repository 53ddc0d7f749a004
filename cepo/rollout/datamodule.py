"""The rollout DataModule: prompts in, verified on-policy rollouts out.

The train DataLoader yields plain prompt batches from a *sized* dataset. Generation happens
in :meth:`RolloutDataModule.on_after_batch_transfer`, which Lightning calls for each batch
right before ``training_step``, i.e. after the previous optimizer step: prefetching a
batch of prompts is harmless, and every rollout batch is generated with the current
weights. Before generating, the engine is synced if the policy's weight version moved.

Evaluation scores the task's held-out split, or, when ``benchmarks`` are named, one
validation DataLoader per benchmark, each verified by its own task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader

from cepo.rollout.batch import RolloutBatch, pack, pad_right
from cepo.rollout.engine import RolloutEngine, SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.tasks import Arithmetic, Example, Task

log = logging.getLogger(__name__)


@dataclass
class EvalBatch:
    """Greedy and sampled verification of a batch of held-out prompts.

    Attributes:
        greedy_correct: ``[P]`` bool.
        sample_correct: ``[P, k]`` bool (``k`` may be 0).
        response_lengths: ``[P]`` greedy response lengths in tokens.
        prompts: the prompts, for logging.
        greedy_responses: the greedy responses, for logging.
    """

    greedy_correct: torch.Tensor
    sample_correct: torch.Tensor
    response_lengths: torch.Tensor
    prompts: list[str]
    greedy_responses: list[str]


def _collate(rows: list[Example]) -> list[Example]:
    return rows


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[Example]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return self.rows[i]


def truncate_left(prompt_ids: list[list[int]], limit: int) -> tuple[list[list[int]], int]:
    """Keep at most the last ``limit`` tokens of every prompt.

    Args:
        prompt_ids: token ids per prompt.
        limit: the longest prompt kept (at least 1).

    Returns:
        The prompts (the tail of each, where the answer cue is) and how many were cut.
    """
    limit = max(int(limit), 1)
    cut = sum(len(p) > limit for p in prompt_ids)
    return [p[-limit:] if len(p) > limit else p for p in prompt_ids], cut


def context_length(policy: torch.nn.Module | None, engine: RolloutEngine) -> int | None:
    """Tokens (prompt + response) the model and the engine accept, or None when unknown."""
    limits = [
        getattr(getattr(policy, "config", None), "max_position_embeddings", None),
        getattr(engine, "max_model_len", None),
    ]
    limits = [int(n) for n in limits if isinstance(n, int) and n > 0]
    return min(limits) if limits else None


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
        eval_temperature: temperature of the avg@k samples.
        benchmarks: evaluation benchmarks, name -> task (e.g. ``cepo.tasks.Arithmetic`` or
            ``cepo.tasks.benchmarks.JsonlBenchmark``); when set, ``validate`` scores the
            ``eval_split`` of each (its first ``eval_size`` problems), verified by that task,
            and logs ``val/<name>/...`` plus the mean over benchmarks, instead of scoring
            ``task``. Names must be non-empty without ``/``. Evaluation prompts longer than
            the model's context less ``sampling.max_new_tokens`` keep only their last tokens
            (a warning says how many); training prompts are never cut.
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
        eval_temperature: float = 1.0,
        benchmarks: dict[str, Task] | None = None,
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
        self.eval_sampling = SamplingConfig(
            temperature=eval_temperature,
            top_p=self.sampling.top_p,
            top_k=self.sampling.top_k,
            max_new_tokens=self.sampling.max_new_tokens,
            stop=list(self.sampling.stop),
            seed=self.sampling.seed + 10_000_019,
        )
        self._engine_bound = False

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

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _Rows(self.task.split("train")),
            batch_size=self.prompts_per_step,
            shuffle=True,
            drop_last=True,
            collate_fn=_collate,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One DataLoader per benchmark (Lightning passes ``dataloader_idx``), else one."""
        loaders = [
            DataLoader(_Rows(self.eval_rows(task)), batch_size=self.eval_batch_size, collate_fn=_collate)
            for task in self.eval_tasks().values()
        ]
        return loaders if self.benchmarks else loaders[0]

    # -- generation -------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: list[Example], dataloader_idx: int = 0):
        module = self.trainer.lightning_module
        self.bind(module)
        if self.engine.weight_version != module.weight_version:
            self.engine.sync_weights(module.policy, module.weight_version)
        if self.trainer.training:
            return self.rollout(batch, module.tokenizer)
        return self.evaluate(batch, module.tokenizer, self.eval_task(dataloader_idx))

    def bind(self, module) -> None:
        """Attach the engine to the module's policy (once)."""
        if not self._engine_bound:
            self.engine.setup(module.policy, module.tokenizer, module.model_path)
            self._engine_bound = True

    def encode_prompts(self, examples: list[Example], tokenizer) -> list[list[int]]:
        return [tokenizer(e.prompt, add_special_tokens=False).input_ids for e in examples]

    def encode_eval_prompts(self, examples: list[Example], tokenizer) -> list[list[int]]:
        """Evaluation prompts, each cut to its last tokens if it and ``max_new_tokens`` would
        not fit the model's (and engine's) context; a warning counts the cut prompts."""
        prompt_ids = self.encode_prompts(examples, tokenizer)
        module = self.trainer.lightning_module if self.trainer is not None else None
        context = context_length(getattr(module, "policy", None), self.engine)
        if context is None:
            return prompt_ids
        prompt_ids, cut = truncate_left(prompt_ids, context - self.sampling.max_new_tokens)
        if cut:
            log.warning(
                "%d of %d evaluation prompts exceed the context (%d tokens less %d new); kept their last tokens",
                cut,
                len(prompt_ids),
                context,
                self.sampling.max_new_tokens,
            )
        return prompt_ids

    def rollout(self, examples: list[Example], tokenizer) -> RolloutBatch:
        """Generate ``G`` rollouts per prompt with the current weights, then verify them."""
        return self.sample(
            self.encode_prompts(examples, tokenizer),
            [e.prompt for e in examples],
            [e.answer for e in examples],
            [e.solution for e in examples],
            tokenizer,
        )

    def sample(
        self,
        prompt_ids: list[list[int]],
        prompts: list[str],
        answers: list[str],
        solutions: list[str],
        tokenizer,
        n: int | None = None,
    ) -> RolloutBatch:
        """``n`` (default ``group_size``) verified samples per already-encoded prompt.

        Objectives that build extra samples (CIPO's corrections, HDPO's privileged rollouts)
        call this with their own prompts: same engine, same weights, same verifier.
        """
        g = n or self.group_size
        t0 = time.perf_counter()
        gen = self.engine.generate(prompt_ids, g, self.sampling)
        t1 = time.perf_counter()
        responses = tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        row_answers = [a for a in answers for _ in range(g)]
        rewards = torch.tensor([self.task.reward(r, a) for r, a in zip(responses, row_answers)], dtype=torch.float)
        extracted = [self.task.extract_answer(r) for r in responses]
        t2 = time.perf_counter()
        rows_prompt = [p for p in prompt_ids for _ in range(g)]
        input_ids, attention, start, resp_mask = pack(rows_prompt, gen.response_ids, tokenizer.pad_token_id)
        engine_lp = None
        if gen.logprobs is not None:
            engine_lp = pad_right(gen.logprobs, resp_mask.shape[1])
        device = self.trainer.lightning_module.device
        return RolloutBatch(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            response_start=start,
            response_mask=resp_mask.to(device),
            rewards=rewards.to(device),
            correct=(rewards >= self.success_threshold).to(device),
            engine_logprobs=None if engine_lp is None else engine_lp.to(device),
            group_size=g,
            prompts=list(prompts),
            answers=list(answers),
            solutions=list(solutions),
            responses=responses,
            extracted=extracted,
            prompt_ids=[list(p) for p in prompt_ids],
            response_ids=gen.response_ids,
            weight_version=gen.weight_version,
            timings={"generate": t1 - t0, "score": t2 - t1},
        )

    def evaluate(self, examples: list[Example], tokenizer, task: Task | None = None) -> EvalBatch:
        """Greedy answer plus ``eval_k`` samples per held-out prompt, verified by ``task``
        (default: the training task). Prompts too long for the context keep their tail."""
        task = task if task is not None else self.task
        prompt_ids = self.encode_eval_prompts(examples, tokenizer)
        greedy = self.engine.generate(
            prompt_ids,
            1,
            SamplingConfig(temperature=0.0, max_new_tokens=self.sampling.max_new_tokens, stop=list(self.sampling.stop)),
        )
        texts = tokenizer.batch_decode(greedy.response_ids, skip_special_tokens=True)
        greedy_ok = torch.tensor([task.is_correct(t, e.answer) for t, e in zip(texts, examples)])
        k = self.eval_k
        sample_ok = torch.zeros((len(examples), k), dtype=torch.bool)
        if k:
            sampled = self.engine.generate(prompt_ids, k, self.eval_sampling)
            stexts = tokenizer.batch_decode(sampled.response_ids, skip_special_tokens=True)
            answers = [e.answer for e in examples for _ in range(k)]
            sample_ok = torch.tensor([task.is_correct(t, a) for t, a in zip(stexts, answers)]).view(len(examples), k)
        lengths = torch.tensor([len(r) for r in greedy.response_ids], dtype=torch.float)
        return EvalBatch(greedy_ok, sample_ok, lengths, [e.prompt for e in examples], texts)

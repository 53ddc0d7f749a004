"""Held-out evaluation in one place: what is scored, how it is drawn and verified, and its metrics.

The :class:`Evaluator` owns the evaluation settings of the DataModule (``data.eval_*``,
``data.benchmarks``) and everything a validation pass does with them:

- the rows scored: the first ``eval_size`` problems of each task's ``eval_split``, one
  validation DataLoader per benchmark (the training task alone without benchmarks), each row
  numbered by its position in its split;
- the draws: a greedy answer and ``eval_k`` samples per prompt (:meth:`Evaluator.evaluate`),
  each verified by its own task, with the engine's own evaluation call counter and a fork of the
  global random stream (:meth:`Evaluator.isolated`), so that an evaluation never changes what
  training draws;
- the per-sample rows (:attr:`EvalBatch.records`) the samples callback writes as they are;
- the metrics (:class:`EvalMetrics`: greedy accuracy, response length, avg@k, pass@k, per
  benchmark), which the module accumulates and logs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric

from cepo.rollout.engine import SamplingConfig
from cepo.rollout.pass_at_k import AvgAtK, PassAtK
from cepo.tasks import Example, Task

log = logging.getLogger(__name__)

EVAL_CALLS_START = 1_000_000_007  # evaluations count their engine calls from here, far from training's
EVAL_SEED_OFFSET = 10_000_019  # the evaluation samples' seed, apart from training's


class EvalRows(NamedTuple):
    """A validation batch: held-out problems and their positions in their split."""

    index: list[int]
    examples: list[Example]


@dataclasses.dataclass
class EvalBatch:
    """Greedy and sampled verification of a batch of held-out prompts.

    Attributes:
        greedy_correct: ``[P]`` bool.
        sample_correct: ``[P, k]`` bool (``k`` may be 0).
        response_lengths: ``[P]`` greedy response lengths in tokens.
        truncated: ``[P]`` bool, greedy responses cut by the length limit (no EOS).
        records: one dict per response (the greedy one, then the ``k`` samples of each prompt), the
            per-sample outputs: ``benchmark`` (``task`` without benchmarks), ``index`` (the
            problem's position in its held-out split), ``prompt``, ``sample`` (``"greedy"`` or its
            index), ``response``, ``extracted``, ``reference``, ``correct``, ``tokens``,
            ``truncated``.
    """

    greedy_correct: torch.Tensor
    sample_correct: torch.Tensor
    response_lengths: torch.Tensor
    truncated: torch.Tensor
    records: list[dict]


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


def eval_sampling(given: SamplingConfig | None, training: SamplingConfig, run_seed: int) -> SamplingConfig:
    """The settings of the held-out samples: ``given`` with the run's seed folded in, or (None)
    temperature 1.0 with the training ``sampling``'s top-p, top-k, length and stop strings
    (``training``'s seed already holds the run's)."""
    if given is None:
        return SamplingConfig(
            temperature=1.0,
            top_p=training.top_p,
            top_k=training.top_k,
            max_new_tokens=training.max_new_tokens,
            stop=list(training.stop),
            seed=training.seed + EVAL_SEED_OFFSET,
        )
    return dataclasses.replace(given, seed=given.seed + 1_000_003 * run_seed + EVAL_SEED_OFFSET)


class _Numbered(Dataset):
    def __init__(self, rows: list[Example]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Example]:
        return i, self.rows[i]


def _collate(items: list[tuple[int, Example]]) -> EvalRows:
    return EvalRows([i for i, _ in items], [e for _, e in items])


class Evaluator:
    """Scores held-out problems: greedy accuracy and avg@k / pass@k, per benchmark.

    Args:
        tasks: the tasks scored, name -> task in DataLoader order; the training task alone is
            named ``""`` (its rows are labelled ``task``, its metrics ``val/<key>``).
        split: the held-out split scored (``val`` or ``test``).
        size: score only the first this many problems of each task (None: all).
        batch_size: prompts per evaluation generation call.
        k: sampled generations per prompt (0: the greedy answer only).
        sampling: how the ``k`` samples are drawn; its ``max_new_tokens`` and ``stop`` bound the
            greedy answer too.
    """

    def __init__(
        self,
        tasks: dict[str, Task],
        split: str,
        size: int | None,
        batch_size: int,
        k: int,
        sampling: SamplingConfig,
    ) -> None:
        if k < 0:
            raise ValueError(f"data.eval_k must be >= 0, got {k}")
        if split not in ("val", "test"):
            raise ValueError(f"data.eval_split must be 'val' or 'test', got {split!r}")
        if size is not None and size < 1:
            raise ValueError(f"data.eval_size must be >= 1 (null: the whole split), got {size}")
        if batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1, got {batch_size}")
        self.tasks = dict(tasks)
        self.split = split
        self.size = size
        self.batch_size = batch_size
        self.k = k
        self.sampling = sampling
        self.calls = EVAL_CALLS_START  # the engine's call counter of evaluations (checkpointed)

    @property
    def names(self) -> list[str]:
        """The benchmark names in DataLoader order (empty: the training task alone)."""
        return [name for name in self.tasks if name]

    def task(self, index: int = 0) -> Task:
        """The task whose rows validation DataLoader ``index`` serves."""
        return list(self.tasks.values())[index]

    def rows(self, task: Task) -> list[Example]:
        """The held-out problems of ``task`` that are scored."""
        rows = task.split(self.split)
        return rows[: self.size] if self.size else rows

    def check_rows(self) -> None:
        """Every task scored has held-out rows (loading, and so validating, its split)."""
        for name, task in self.tasks.items():
            if not self.rows(task):
                where = f"benchmark {name!r}" if name else "the task"
                raise ValueError(f"{where} has no {self.split!r} split to evaluate on")

    def scope(self) -> str:
        """What a pass scores, in words (``val, 500 problems``)."""
        return f"{self.split}, {sum(len(self.rows(t)) for t in self.tasks.values())} problems"

    def dataloaders(self) -> list[DataLoader]:
        """One DataLoader of :class:`EvalRows` per task, in order (never shuffled)."""
        return [
            DataLoader(_Numbered(self.rows(task)), batch_size=self.batch_size, collate_fn=_collate)
            for task in self.tasks.values()
        ]

    def metrics(self) -> EvalMetrics:
        """A fresh accumulator of this evaluator's metrics."""
        return EvalMetrics(self.names, self.k)

    # -- the draws ---------------------------------------------------------------------------
    def isolated(self, generator, rows: EvalRows, dataloader_idx: int = 0) -> EvalBatch:
        """:meth:`evaluate` a validation batch with the engine's evaluation counter and a forked
        global RNG, then put the training draw state back: an evaluation, scheduled or not, never
        changes what training draws, and it draws the same whether or not the run was resumed
        before it (the counter is checkpointed).

        Args:
            generator: the :class:`~cepo.rollout.generator.RolloutGenerator` (engine, prompt format).
            rows: the batch of validation DataLoader ``dataloader_idx``.
        """
        engine = generator.engine
        training = engine.state_dict()
        engine.load_state_dict({"calls": self.calls})
        try:
            with torch.random.fork_rng(devices=[]):
                name = list(self.tasks)[dataloader_idx]
                return self.evaluate(generator, rows.examples, self.task(dataloader_idx), rows.index, name)
        finally:
            self.calls = engine.state_dict().get("calls", self.calls)
            engine.load_state_dict(training)

    def evaluate(
        self,
        generator,
        examples: list[Example],
        task: Task,
        index: list[int] | None = None,
        name: str = "",
    ) -> EvalBatch:
        """A greedy answer and ``k`` samples per prompt with ``generator``'s engine, verified by
        ``task``. Prompts too long for the context keep their tail.

        Args:
            generator: the connected :class:`~cepo.rollout.generator.RolloutGenerator`.
            examples: the held-out problems.
            task: their verifier.
            index: their positions in the split (None: ``0, 1, ...``).
            name: the benchmark's name (``""``: the training task, rows labelled ``task``).
        """
        index = list(range(len(examples))) if index is None else index
        tokenizer, limit = generator.tokenizer, self.sampling.max_new_tokens
        texts = generator.render(generator.conversations(examples))
        images = generator.images(examples)
        prompt_ids = self.encode(generator, texts, images)
        greedy_sampling = SamplingConfig(temperature=0.0, max_new_tokens=limit, stop=list(self.sampling.stop))
        greedy = generator.generate(prompt_ids, 1, greedy_sampling, images)
        responses = tokenizer.batch_decode(greedy.response_ids, skip_special_tokens=True)
        greedy_ok = torch.tensor([task.is_correct(t, e.answer) for t, e in zip(responses, examples)])
        greedy_cut = generator.truncated(greedy.response_ids, limit)
        record = Records(name or "task", task, texts, index)
        rows = zip(responses, greedy.response_ids, examples, greedy_ok, greedy_cut)
        records = [record(p, "greedy", r, ids, e.answer, bool(ok), cut) for p, (r, ids, e, ok, cut) in enumerate(rows)]
        k = self.k
        sample_ok = torch.zeros((len(examples), k), dtype=torch.bool)
        if k:
            sampled = generator.generate(prompt_ids, k, self.sampling, images)
            stexts = tokenizer.batch_decode(sampled.response_ids, skip_special_tokens=True)
            answers = [e.answer for e in examples for _ in range(k)]
            sample_ok = torch.tensor([task.is_correct(t, a) for t, a in zip(stexts, answers)]).view(len(examples), k)
            cuts = generator.truncated(sampled.response_ids, limit)
            for i, (r, ids, cut) in enumerate(zip(stexts, sampled.response_ids, cuts)):
                p, j = divmod(i, k)
                records.append(record(p, j, r, ids, answers[i], bool(sample_ok[p, j]), cut))
        lengths = torch.tensor([len(r) for r in greedy.response_ids], dtype=torch.float)
        return EvalBatch(greedy_ok, sample_ok, lengths, torch.tensor(greedy_cut), records)

    def encode(self, generator, texts: list[str], images: list | None = None) -> list[list[int]]:
        """Evaluation prompts, each cut to its last tokens if it and ``max_new_tokens`` would not
        fit the model's (and engine's) context; a warning counts the cut prompts."""
        prompt_ids = generator.encode(texts, images)
        context = generator.context_length()
        if context is None:
            return prompt_ids
        new = self.sampling.max_new_tokens
        prompt_ids, cut = truncate_left(prompt_ids, context - new)
        if cut:
            log.warning(
                "%d of %d evaluation prompts exceed the context (%d tokens less %d new); kept their last tokens",
                cut,
                len(prompt_ids),
                context,
                new,
            )
        return prompt_ids

    # -- exact resume ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"eval_calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state.get("eval_calls", EVAL_CALLS_START)


@dataclasses.dataclass
class Records:
    """Builds the per-sample rows of one evaluation batch (:attr:`EvalBatch.records`)."""

    benchmark: str
    task: Task
    prompts: list[str]
    index: list[int]

    def __call__(self, p: int, sample, response: str, ids: list[int], reference, correct: bool, cut: bool) -> dict:
        """The row of a response to prompt ``p`` of the batch (``sample``: ``"greedy"`` or its index)."""
        return {
            "benchmark": self.benchmark,
            "index": self.index[p],
            "prompt": self.prompts[p],
            "sample": sample,
            "response": response,
            "extracted": self.task.extract_answer(response),
            "reference": reference,
            "correct": correct,
            "tokens": len(ids),
            "truncated": cut,
        }


# -- metrics -----------------------------------------------------------------------------------
def _group(k: int) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict(
        {"acc": MeanMetric(), "len": MeanMetric(), "truncated": MeanMetric()}
        | ({"avg_k": AvgAtK(), "pass_k": PassAtK(k)} if k else {})
    )


class EvalMetrics(torch.nn.Module):
    """The metrics of one evaluation pass.

    torchmetrics ``Metric``s, so ``compute()`` reduces across DDP processes. With benchmark names
    the keys are ``val/<name>/<key>`` plus ``val/<key>`` averaged over benchmarks (equal weights);
    without, the task's own ``val/<key>``.

    Args:
        names: benchmark names in DataLoader order (empty: the task alone, one DataLoader).
        k: sampled generations per prompt (0: greedy only, no avg@k / pass@k).
    """

    def __init__(self, names: Sequence[str] = (), k: int = 0) -> None:
        super().__init__()
        self.names = list(names)
        self.k = k
        # a list, not a dict keyed by name: names like "eval" would clash with Module attributes
        self.groups = torch.nn.ModuleList(_group(k) for _ in (self.names or [""]))

    def update(self, batch: EvalBatch, index: int = 0) -> None:
        """Add an :class:`EvalBatch` of DataLoader ``index``."""
        group = self.groups[index]
        group["acc"].update(batch.greedy_correct.float())
        group["len"].update(batch.response_lengths)
        group["truncated"].update(batch.truncated.float())
        k = batch.sample_correct.shape[1]
        if k and "pass_k" in group:
            n = torch.full((batch.sample_correct.shape[0],), k)
            c = batch.sample_correct.sum(-1)
            group["avg_k"].update(n, c)
            group["pass_k"].update(n, c)

    def _values(self, group: torch.nn.ModuleDict) -> dict[str, torch.Tensor]:
        values = {"acc": group["acc"].compute(), "response_len": group["len"].compute()}
        values["truncated"] = group["truncated"].compute()  # greedy answers cut by the length limit
        if "pass_k" in group:
            values[f"avg@{self.k}"] = group["avg_k"].compute()
            values[f"pass@{self.k}"] = group["pass_k"].compute()
        return values

    def compute(self) -> dict[str, torch.Tensor]:
        """``val/...`` metric name -> value."""
        if not self.names:
            return {f"val/{key}": v for key, v in self._values(self.groups[0]).items()}
        metrics, per_key = {}, {}
        for name, group in zip(self.names, self.groups):
            for key, value in self._values(group).items():
                metrics[f"val/{name}/{key}"] = value
                per_key.setdefault(key, []).append(value.float())
        metrics.update({f"val/{key}": torch.stack(v).mean() for key, v in per_key.items()})
        return metrics

    def reset(self) -> None:
        for group in self.groups:
            for metric in group.values():
                metric.reset()

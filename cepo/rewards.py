"""Composable rewards: weighted components summed into each rollout's scalar reward.

``data.rewards`` lists components chosen by ``class_path``; a rollout's reward is
``sum_k weight_k * component_k(rollout)`` and each component's mean is logged every step as
``train/reward/<name>``. Without ``data.rewards`` the reward is the task's own (its verifier,
1 for a correct answer, else 0). ``data.success_threshold`` still decides which rollouts count as
correct (the wrong-answer teacher, CIPO, HDPO and ``train/acc`` use it), so with the CEPO paper's
``0.9 accuracy + 0.1 format`` a threshold of 0.9 counts a correct answer without a box as correct.

Built in: :class:`Accuracy` (the task's verifier), :class:`Format` (a final ``\\boxed{}``),
:class:`OverlongPenalty` (DAPO's soft penalty on responses near the length limit). Your own
function joins with :class:`Function`; its signature is::

    def my_reward(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
        ...  # one float per response; prompts and answers are repeated per rollout

and it is named ``module.attr`` (importable) or ``path/to/file.py:attr``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cepo.tasks import Task


@dataclass
class RewardInputs:
    """One batch of rollouts to score (one entry per rollout).

    Attributes:
        prompts: the prompt each rollout answered (repeated over its group).
        responses: the decoded responses.
        answers: the reference answers (repeated over each group).
        lengths: response lengths in tokens (EOS included when the response ended).
        truncated: whether each response hit ``max_new_tokens`` without ending.
        max_new_tokens: the sampling length limit.
        task: the task whose verifier decides correctness.
    """

    prompts: list[str]
    responses: list[str]
    answers: list[str]
    lengths: list[int]
    truncated: list[bool]
    max_new_tokens: int
    task: Task


class Reward:
    """Base class of reward components.

    Args:
        weight: the component's weight in the sum.
        name: its metric name (``train/reward/<name>``); default: the class's.
    """

    default_name = "reward"

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        self.weight = float(weight)
        self.name = name or self.default_name
        if not self.name or "/" in self.name:
            raise ValueError(f"reward name must be non-empty without '/', got {self.name!r}")

    def score(self, inputs: RewardInputs) -> list[float]:
        """One unweighted score per rollout."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, name={self.name!r})"


class Accuracy(Reward):
    """The task's verifier: 1 when the response reaches the reference answer, else 0."""

    default_name = "accuracy"

    def score(self, inputs: RewardInputs) -> list[float]:
        return [float(inputs.task.reward(r, a)) for r, a in zip(inputs.responses, inputs.answers)]


class Format(Reward):
    """1 when the response contains ``pattern`` (default: a ``\\boxed{...}`` answer), else 0.

    Args:
        pattern: a regular expression searched in the response.
    """

    default_name = "format"

    def __init__(self, weight: float = 1.0, name: str | None = None, pattern: str = r"\\boxed\{.+?\}") -> None:
        super().__init__(weight, name)
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as err:
            raise ValueError(f"Format.pattern is not a regular expression: {err}") from None

    def score(self, inputs: RewardInputs) -> list[float]:
        return [float(self.pattern.search(r) is not None) for r in inputs.responses]


class OverlongPenalty(Reward):
    """DAPO's soft overlong punishment: 0 up to ``max_new_tokens - buffer`` tokens, then falling
    linearly to -1 at ``max_new_tokens`` (truncated responses get -1).

    Args:
        buffer: the tokens before the limit over which the penalty grows.
    """

    default_name = "overlong"

    def __init__(self, weight: float = 1.0, name: str | None = None, buffer: int = 64) -> None:
        super().__init__(weight, name)
        if buffer < 1:
            raise ValueError(f"OverlongPenalty.buffer must be >= 1, got {buffer}")
        self.buffer = buffer

    def score(self, inputs: RewardInputs) -> list[float]:
        start = inputs.max_new_tokens - self.buffer
        return [
            -1.0 if cut else -min(max(n - start, 0) / self.buffer, 1.0)
            for n, cut in zip(inputs.lengths, inputs.truncated)
        ]


def load_function(spec: str) -> Callable:
    """``module.attr`` or ``path/to/file.py:attr`` -> the callable."""
    if ":" in spec:
        path, attr = spec.rsplit(":", 1)
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"reward function file not found: {file}")
        loader = importlib.util.spec_from_file_location(f"cepo_user_reward_{file.stem}", file)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module_name, _, attr = spec.rpartition(".")
        if not module_name:
            raise ValueError(f"reward function must be 'module.attr' or 'file.py:attr', got {spec!r}")
        module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r}: {attr!r} is not a callable")
    return fn


class Function(Reward):
    """A user-defined reward ``fn(prompts, responses, answers) -> list[float]``.

    Args:
        function: ``module.attr`` (importable) or ``path/to/file.py:attr``.
        weight: its weight in the sum.
        name: its metric name (default: the function's name).
    """

    def __init__(self, function: str, weight: float = 1.0, name: str | None = None) -> None:
        self.function = function
        self.fn = load_function(function)
        super().__init__(weight, name or self.fn.__name__)

    def score(self, inputs: RewardInputs) -> list[float]:
        values = self.fn(list(inputs.prompts), list(inputs.responses), list(inputs.answers))
        values = [float(v) for v in values]
        if len(values) != len(inputs.responses):
            raise ValueError(
                f"reward function {self.function!r} returned {len(values)} values for {len(inputs.responses)} responses"
            )
        return values


def check_names(components: list[Reward]) -> None:
    """Refuse two components with one metric name."""
    names = [c.name for c in components]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"data.rewards: two components are named {dupes[0]!r} (set init_args.name)")


def combine(components: list[Reward], inputs: RewardInputs) -> tuple[list[float], dict[str, list[float]]]:
    """``(total per rollout, {name: unweighted scores})`` of the weighted sum."""
    scores = {c.name: c.score(inputs) for c in components}
    totals = [sum(c.weight * scores[c.name][i] for c in components) for i in range(len(inputs.responses))]
    return totals, scores

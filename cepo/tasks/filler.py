"""The built-in arithmetic task with free filler: a task on which token-level credit should matter.

A problem ``8+7-5+9=`` is answered ``" yes so 15-5+9 = kind 10+9 = far well 19"``: the worked steps
of :class:`~cepo.tasks.Arithmetic`, each preceded by a *slot* of filler words. The verifier reads
only the number after the last ``=`` (letters before it are skipped), so

- the filler is **free**: any lowercase words, or none, score the same (no leak into the reward);
- the filler is **high-entropy**: the reference solutions draw each slot afresh, ``1..max_words``
  words uniformly from :data:`FILLER_WORDS` (32 words starting with 25 different letters: the
  first character of a word alone carries 4.6 bits), and the
  warm-up redraws them every time it shows a solution, so the base learns the *distribution* of
  filler, not one wording per problem, and the words carry no information about the problem.

Why: GRPO gives every token of a rollout its sequence advantage. In a correct rollout the few
decisive tokens (the digits of each step's result) earned the reward and the filler did not, yet
the filler words a correct rollout happened to draw are reinforced just as much: noise in the
gradient that grows with the share of filler tokens. A rule that weights tokens by evidence (the
teacher shown the answer against one shown a wrong answer, or against the student) should leave
filler close to neutral, since knowing the answer says nothing about which filler word comes next.
The design rationale and what was measured are in ``experiments/README.md``.
"""

from __future__ import annotations

import random
import re
from functools import cached_property

from cepo.tasks.arithmetic import Arithmetic
from cepo.tasks.base import Example

FILLER_WORDS = (
    "ah", "but", "cool", "do", "eh", "fine", "go", "hmm", "is", "just", "kind", "lo",
    "mhm", "now", "ok", "per", "quite", "right", "so", "then", "uh", "very", "well", "yes",
    "zap", "and", "bit", "core", "dear", "even", "far", "got",
)  # fmt: skip
"""Filler vocabulary: lowercase words only (no digit, ``=``, ``+`` or ``-``), so filler can never
be read as a step or an answer."""

_FILLER = re.compile(r"[a-z]+ ")
_ANSWER = re.compile(r"\s*(?:[a-z]+\s+)*(\d+)\s*")


def draw_filler(rng: random.Random, max_words: int) -> str:
    """One slot: ``1..max_words`` words drawn uniformly (with replacement) from :data:`FILLER_WORDS`."""
    return " ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(1, max_words)))


def with_filler(solution: str, rng: random.Random, max_words: int) -> str:
    """A worked solution (``" 15-5+9 = 10+9 = 19"``) with a fresh filler slot before each step.

    >>> with_filler(" 15-5 = 10", random.Random(0), 1)
    ' hmm 15-5 = but 10'
    """
    lines = strip_filler(solution).strip().split(" = ")
    return " " + " = ".join(f"{draw_filler(rng, max_words)} {line}" for line in lines)


def strip_filler(response: str) -> str:
    """The response without its filler words (``" ok 15-5 = so 10"`` -> ``" 15-5 = 10"``)."""
    return _FILLER.sub("", response)


class FillerArithmetic(Arithmetic):
    """:class:`~cepo.tasks.Arithmetic` whose solutions carry free, high-entropy filler words.

    The problems and splits are the arithmetic task's at the same settings (the same prompts and
    answers); only the reference solutions and the verifier differ.

    Args:
        max_words: most filler words per slot in the reference solutions (each slot draws
            ``1..max_words``); the verifier accepts any number, zero included.
        min_ops: fewest operations per problem.
        max_ops: most operations per problem.
        max_operand: largest operand.
        train_size: training problems (duplicates removed, so possibly slightly fewer).
        val_size: validation problems.
        test_size: test problems.
        seed: seed of the split generator (problems and the reference solutions' filler).
    """

    def __init__(
        self,
        max_words: int = 2,
        min_ops: int = 2,
        max_ops: int = 3,
        max_operand: int = 9,
        train_size: int = 20000,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 1234,
    ) -> None:
        if max_words < 1:
            raise ValueError(f"task.max_words must be >= 1, got {max_words}")
        super().__init__(min_ops, max_ops, max_operand, train_size, val_size, test_size, seed)
        self.max_words = max_words

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        splits = super()._splits
        rng = random.Random(self.seed * 1000 + 3)  # the filler's own stream: the problems stay the same
        return {
            name: [Example(e.prompt, e.answer, with_filler(e.solution, rng, self.max_words)) for e in rows]
            for name, rows in splits.items()
        }

    def training_solution(self, example: Example, rng: random.Random) -> str:
        """The reference solution with its filler drawn afresh from ``rng`` (for the warm-up)."""
        return with_filler(example.solution, rng, self.max_words)

    def extract_answer(self, response: str) -> str | None:
        """The whole number after the last ``=``, filler words before it skipped."""
        m = _ANSWER.fullmatch(response.split("=")[-1])
        return m.group(1) if m else None

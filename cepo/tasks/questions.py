"""Arithmetic questions in words for instruct models: ``What is 17 * 6?``, answered in a box.

Every question ``a op b`` with ``a, b`` in ``[1, max_operand]`` and ``op`` in ``+ - *`` (``a >= b``
for ``-``), shuffled once by ``seed`` and split: the first ``val_size`` validation, the next
``test_size`` test, the rest training, so no held-out question is trained on. At 20 this is 1,010
questions. SmolLM2-135M-Instruct answers 33.0% of the 200 validation questions greedily when
asked for a boxed answer, and 13.5% when asked to reason step by step first (measured; its
step-by-step working is mostly wrong), which leaves RL room on a CPU (docs/results.md).
The verdict is the JSONL tasks' (:mod:`cepo.tasks.jsonl`) with exact match: the committed answer
(last box, else last number) against the value, and arithmetic left undone (``9 + 20``) is wrong.
"""

from __future__ import annotations

import random
from functools import cached_property

from cepo.prompts.templates import fill
from cepo.tasks.base import Example, Task
from cepo.tasks.jsonl import exact_match, extracted_answer

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticQuestions(Task):
    """``What is a op b?`` over ``+ - *`` with operands up to ``max_operand``.

    Args:
        max_operand: largest operand (smallest 1).
        val_size: validation questions.
        test_size: test questions.
        seed: seed of the shuffle that splits the questions (the same everywhere).
        prompt_template: the user turn; ``{question}`` is ``What is a op b?``.
    """

    def __init__(
        self,
        max_operand: int = 20,
        val_size: int = 200,
        test_size: int = 200,
        seed: int = 7,
        prompt_template: str = "{question}\nPut your final answer within \\boxed{}.",
    ) -> None:
        if max_operand < 2:
            raise ValueError(f"task.max_operand must be >= 2, got {max_operand}")
        if "{question}" not in prompt_template:
            raise ValueError(f"task.prompt_template must contain {{question}}, got {prompt_template!r}")
        self.max_operand, self.seed, self.prompt_template = max_operand, seed, prompt_template
        self.sizes = {"val": val_size, "test": test_size}

    def questions(self) -> list[tuple[str, str]]:
        """Every ``(question, answer)`` in the split order (shuffled by ``seed``)."""
        rows = []
        for op, fn in _OPS.items():
            for a in range(1, self.max_operand + 1):
                for b in range(1, self.max_operand + 1):
                    if op == "-" and a < b:
                        continue
                    rows.append((f"What is {a} {op} {b}?", str(fn(a, b))))
        random.Random(self.seed).shuffle(rows)
        return rows

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        rows = self.questions()
        n_val, n_test = self.sizes["val"], self.sizes["test"]
        if n_val + n_test >= len(rows):
            raise ValueError(
                f"task.val_size + task.test_size ({n_val} + {n_test}) leave no training question "
                f"of the {len(rows)} at max_operand {self.max_operand}"
            )
        make = lambda part: [Example(prompt=fill(self.prompt_template, question=q), answer=a) for q, a in part]
        return {
            "val": make(rows[:n_val]),
            "test": make(rows[n_val : n_val + n_test]),
            "train": make(rows[n_val + n_test :]),
        }

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected one of ['test', 'train', 'val']")
        return self._splits[name]

    def extract_answer(self, response: str) -> str | None:
        return extracted_answer(response)

    def is_correct(self, response: str, answer: str) -> bool:
        """The committed answer equals the value (an unevaluated ``9 + 20`` does not)."""
        return exact_match(self.extract_answer(response), answer)

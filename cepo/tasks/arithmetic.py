"""The built-in task: multi-step integer arithmetic written as steps.

A problem ``8+7-5+9=`` is answered ``" 15-5+9 = 10+9 = 19"``: each step reduces the
leftmost operation, so a response mixes *decisive* tokens (the digits of each intermediate
result and of the answer) with *copied* operands and *filler* (spaces and ``=``). That mix is
what token-level credit assignment has to tell apart.

Splits are drawn from fixed seeds; validation and test problems are removed from training.
"""

from __future__ import annotations

import random
import re
from functools import cached_property

from cepo.tasks.base import Example, Task

# Character roles in a response, for credit diagnostics (see token_roles).
DECISIVE, COPIED, FILLER = "decisive", "copied", "filler"
_NUMBER = re.compile(r"\d+")


def solve_steps(operands: list[int], ops: list[str]) -> tuple[list[str], int]:
    """The step lines after the first reduction and the final value.

    >>> solve_steps([23, 48, 15], ["+", "-"])
    (['71-15', '56'], 56)
    """
    value = operands[0]
    lines = []
    for i, op in enumerate(ops):
        value = value + operands[i + 1] if op == "+" else value - operands[i + 1]
        rest = "".join(f"{o}{n}" for o, n in zip(ops[i + 1 :], operands[i + 2 :]))
        lines.append(f"{value}{rest}")
    return lines, value


def make_example(rng: random.Random, min_ops: int, max_ops: int, max_operand: int) -> Example:
    """Draw one problem whose every intermediate value is non-negative."""
    n_ops = rng.randint(min_ops, max_ops)
    operands = [rng.randint(1, max_operand)]
    ops: list[str] = []
    value = operands[0]
    for _ in range(n_ops):
        n = rng.randint(1, max_operand)
        op = "-" if (rng.random() < 0.5 and value - n >= 0) else "+"
        value = value + n if op == "+" else value - n
        operands.append(n)
        ops.append(op)
    problem = str(operands[0]) + "".join(f"{o}{n}" for o, n in zip(ops, operands[1:]))
    lines, value = solve_steps(operands, ops)
    return Example(prompt=f"{problem}=", answer=str(value), solution=" " + " = ".join(lines))


class Arithmetic(Task):
    """Multi-step ``+``/``-`` arithmetic over integers in ``[1, max_operand]``.

    The default (2-3 operations on single-digit operands) is what the ~1M-parameter built-in
    base learns to partial accuracy in a few minutes on a CPU; two-digit operands took the same
    model over 3,000 supervised steps to pass 5%.

    Args:
        min_ops: fewest operations per problem.
        max_ops: most operations per problem.
        max_operand: largest operand.
        train_size: training problems (duplicates removed, so possibly slightly fewer).
        val_size: validation problems.
        test_size: test problems.
        seed: seed of the split generator; the same seed gives the same splits everywhere.
    """

    def __init__(
        self,
        min_ops: int = 2,
        max_ops: int = 3,
        max_operand: int = 9,
        train_size: int = 20000,
        val_size: int = 500,
        test_size: int = 500,
        seed: int = 1234,
    ) -> None:
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"task.min_ops/max_ops need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
        if max_operand < 1:
            raise ValueError(f"task.max_operand must be >= 1, got {max_operand}")
        self.min_ops, self.max_ops, self.max_operand = min_ops, max_ops, max_operand
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        held_out: dict[str, list[Example]] = {}
        seen: set[str] = set()
        for offset, name in ((1, "val"), (2, "test")):
            rng = random.Random(self.seed * 1000 + offset)
            rows: list[Example] = []
            while len(rows) < self.sizes[name]:
                ex = make_example(rng, self.min_ops, self.max_ops, self.max_operand)
                if ex.prompt not in seen:
                    seen.add(ex.prompt)
                    rows.append(ex)
            held_out[name] = rows
        rng = random.Random(self.seed * 1000)
        train = []
        for _ in range(self.sizes["train"]):
            ex = make_example(rng, self.min_ops, self.max_ops, self.max_operand)
            if ex.prompt not in seen:
                train.append(ex)
        return {"train": train, **held_out}

    def split(self, name: str) -> list[Example]:
        if name not in self.sizes:
            raise ValueError(f"unknown split {name!r}; expected one of {sorted(self.sizes)}")
        return self._splits[name]

    def extract_answer(self, response: str) -> str | None:
        return final_number(response)

    def token_roles(self, response: str) -> list[str]:
        """Per-character roles (decisive / copied / filler) for credit diagnostics."""
        return token_roles(response)


def final_number(response: str) -> str | None:
    """The whole number after the last ``=`` of a worked response (``" 15-5 = 10"`` -> ``"10"``)."""
    tail = response.split("=")[-1].strip()
    return tail if tail.isdigit() else None


def token_roles(response: str) -> list[str]:
    """The role of each character of an arithmetic response.

    ``decisive``: digits of a step's result (the first number after the opening space or
    after ``=``), the answer included. ``copied``: operators and operand digits carried over
    from the previous line. ``filler``: spaces, ``=`` and anything else.
    """
    roles = [FILLER] * len(response)
    start = 0
    for segment in response.split("="):
        first = True
        for m in _NUMBER.finditer(segment):
            role = DECISIVE if first else COPIED
            for i in range(m.start(), m.end()):
                roles[start + i] = role
            first = False
        for i, ch in enumerate(segment):
            if ch in "+-":
                roles[start + i] = COPIED
        start += len(segment) + 1
    return roles

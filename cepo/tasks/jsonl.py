"""Tasks read from JSONL files (GSM8K-style, MATH-style, or plain prompt/answer rows).

Every row is validated when the task is loaded, before any training: a row without a
question or an answer is an error naming the file and line.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

from cepo.tasks.base import Example, Task

_BOXED = re.compile(r"\\boxed\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
QUESTION_KEYS = ("prompt", "question", "problem")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def reference_answer(row: dict) -> str | None:
    """The reference answer of a row: ``answer`` (GSM8K ``#### n`` tail if present), else the
    last ``\\boxed{}`` of ``solution``."""
    answer = row.get("answer")
    if isinstance(answer, (int, float)):
        return str(answer)
    if isinstance(answer, str) and answer.strip():
        return answer.split("####")[-1].strip() if "####" in answer else answer.strip()
    solution = row.get("solution")
    if isinstance(solution, str):
        return last_boxed(solution)
    return None


def normalise(answer: str) -> str:
    """Canonical form for exact comparison: no spaces, no thousands commas, no trailing ``.0``."""
    a = answer.strip().replace(" ", "").replace(",", "").rstrip(".").replace("$", "")
    if re.fullmatch(r"-?\d+\.0+", a):
        a = a.split(".")[0]
    return a


def read_jsonl(path: str | Path, prompt_template: str) -> list[Example]:
    """Load and validate ``path``; raise ``ValueError`` naming the file and line of a bad row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            question = next((row[k] for k in QUESTION_KEYS if isinstance(row.get(k), str)), None)
            if not question:
                raise ValueError(f"{path}:{lineno}: row has no question (one of {QUESTION_KEYS})")
            answer = reference_answer(row)
            if answer is None:
                raise ValueError(
                    f"{path}:{lineno}: row has no answer ('answer', or a \\boxed{{}} 'solution')"
                )
            solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
            rows.append(Example(prompt_template.format(question=question), answer, solution))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


class JsonlTask(Task):
    """Problems from JSONL files, one file per split.

    Args:
        train: path of the training split.
        val: path of the validation split (defaults to none).
        test: path of the test split (defaults to none).
        prompt_template: how a question becomes a prompt; ``{question}`` is replaced.
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        prompt_template: str = "Question: {question}\nAnswer:",
    ) -> None:
        self.paths = {"train": train, "val": val, "test": test}
        self.prompt_template = prompt_template

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        return {k: read_jsonl(p, self.prompt_template) if p else [] for k, p in self.paths.items()}

    def validate(self) -> None:
        """Read every configured file now (fail before training)."""
        _ = self._splits

    def split(self, name: str) -> list[Example]:
        if name not in self.paths:
            raise ValueError(f"unknown split {name!r}; expected one of {sorted(self.paths)}")
        return self._splits[name]

    def extract_answer(self, response: str) -> str | None:
        boxed = last_boxed(response)
        if boxed is not None:
            return normalise(boxed)
        if "####" in response:
            tail = response.split("####")[-1].split()
            return normalise(tail[0]) if tail else None
        numbers = _NUMBER.findall(response)
        return normalise(numbers[-1]) if numbers else None

    def is_correct(self, response: str, answer: str) -> bool:
        got = self.extract_answer(response)
        return got is not None and got == normalise(answer)

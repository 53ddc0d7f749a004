"""Evaluation benchmarks: one JSONL file scored as a held-out split.

Name several benchmarks with ``data.benchmarks`` (name -> task); ``cepo validate`` then
scores the ``data.eval_split`` split of each and reports ``val/<name>/acc``, ``avg@k`` and
``pass@k`` plus their mean over benchmarks. A benchmark file has no training split, so
:class:`JsonlBenchmark` serves the same rows as both ``val`` and ``test``::

    data:
      benchmarks:
        arithmetic: {class_path: cepo.tasks.Arithmetic}
        gsm8k:
          class_path: cepo.tasks.benchmarks.JsonlBenchmark
          init_args: {path: tests/fixtures/gsm8k_test_sample.jsonl}
"""

from __future__ import annotations

from typing import Literal

from cepo.tasks.jsonl import JsonlTask


class JsonlBenchmark(JsonlTask):
    """A JSONL file of GSM8K rows (``question``, ``answer`` ending ``#### n``) or MATH rows
    (``problem``, ``solution`` with a ``\\boxed{}`` or an ``answer`` field), evaluated only.

    Args:
        path: the file; a relative path is read from the working directory.
        prompt_template: how a question becomes the user turn; ``{question}`` is replaced.
        verifier: ``math_verify`` (equivalence by math-verify, exact match first) or ``exact``.
        verify_timeout: seconds math-verify may spend on one response.
    """

    def __init__(
        self,
        path: str,
        prompt_template: str = "Question: {question}\nAnswer:",
        verifier: Literal["math_verify", "exact"] = "math_verify",
        verify_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            val=path, test=path, prompt_template=prompt_template, verifier=verifier, verify_timeout=verify_timeout
        )
        self.path = path
        self.settings = {k: "task.path" for k in self.settings}

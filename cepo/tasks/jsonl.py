"""Tasks read from dataset files (GSM8K-style, MATH-style, or plain prompt/answer rows): JSONL,
Parquet, or a folder saved by Hugging Face ``datasets`` (``save_to_disk``), one per split; the
rows of each kind are read as :mod:`cepo.tasks.sources` says, and have the same layouts.

Every row is validated when the task is loaded, before any training: a row without a
question or an answer is an error naming the file and line (JSONL) or row (Parquet, datasets). A
row holds a question (``prompt``, ``question`` or ``problem``) that ``prompt_template`` turns into
the user turn, or a conversation (``messages``: ``role``/``content`` dicts ending with a user turn)
used as is.

A row may carry images (the Geo3k layout: ``problem`` with an ``<image>`` placeholder,
``answer``, ``images``): ``images`` is a list of image specs or a single one (a path relative to
the dataset file's folder or absolute, a ``data:`` URL, raw base64, or ``{"bytes": base64}`` as
Hugging Face ``datasets`` exports them; in Parquet and saved datasets the ``{bytes, path}``
structs of an ``Image`` feature, raw bytes; :mod:`cepo.tasks.images`). They are checked when the
task is loaded and kept encoded in :attr:`Example.images` (:class:`~cepo.tasks.images.EncodedImage`:
the bytes, or the path of a file), to be decoded when a batch needs them. The user turn (the
prompt as ``prompt_template`` formats it, or the last user turn of ``messages``) must hold one
``<image>`` placeholder per image, in the images' order; when it holds none, the placeholders are
put at its start (``"<image>" * n + prompt``). Any other count, or a placeholder in another turn,
is an error naming the file and line; so is a text row whose prompt holds ``<image>`` without images.

Responses are verified with math-verify (``verifier="math_verify"``, the default), which
accepts equivalent forms (``0.5`` for ``\\frac{1}{2}``, ``(3, \\pi/2)`` for a boxed tuple),
or by exact match of the normalised extracted answer (``verifier="exact"``). math-verify's own
timeouts use ``SIGALRM``, which only works on the main thread, so cepo always runs it in a
daemon worker thread with its timeouts off and bounds it with its own (``verify_timeout``);
on a timeout or an error the verdict falls back to the exact match. A boxed response is verified
on its last box alone; where the reference is a plain number, an answer that leaves arithmetic
undone (``9 + 20``) is wrong (:func:`unevaluated`): math-verify evaluates it, and RL found that
restating the question (``9 + 20 =``) scored as correct. math-verify's warning that
its timeouts are off ("Timeout is disabled ... to prevent code getting stuck") is silenced for
that reason (:class:`_CepoTimesMathVerify`): cepo supplies the timeout.

Answers are compared as what they mean (:func:`normalise`): a comma inside a number written with
thousands separators (``1,000``, ``-12,345,678.5``, LaTeX's ``1{,}000``: the whole answer one
number, its groups after the first exactly three digits, no space around the commas) is dropped;
every other comma separates items (``(1,5)``, ``[1, 2]``, ``2, 3``) and is kept, so ``(1,5)`` is
not ``(15)``. The exact match compares item lists as written (``2, 3`` is not ``3, 2``);
math-verify reads a bare list as a set (``2, 3`` equals ``3, 2``) and a bracketed one as a tuple
or an interval (order and brackets count). A response whose last ``\\boxed{}`` is empty is never
correct, and a row whose reference answer is empty is refused when the file is loaded.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from cepo.bases import assets
from cepo.prompts.templates import check, fill
from cepo.tasks.base import IMAGE_PLACEHOLDER, Example, Task
from cepo.tasks.images import open_images
from cepo.tasks.sources import open_rows

log = logging.getLogger(__name__)
T = TypeVar("T")

_BOXED = re.compile(r"\\boxed\{")
_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")  # "5," is the number 5
_PLAIN = re.compile(r"-?\d+(?:\.\d+)?")
_OPERATION = re.compile(r"\d\s*(?:[-+*^×·÷]|\\times|\\cdot|\\div)\s*\(?\s*-?\d")  # "9 + 20", "3\times 4"
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
QUESTION_KEYS = ("prompt", "question", "problem")
ROLES = ("system", "user", "assistant")


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


def _empty_reference(row: dict) -> str:
    """Why a row's reference answer (:func:`reference_answer`) came out empty, for its error."""
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip():
        if "####" in answer:
            return "row has an empty answer (nothing after the '####' of 'answer')"
        return f"row has an empty answer ('answer' {answer.strip()!r} without spaces and '$')"
    return "row has an empty answer (the last \\boxed{} of 'solution' is empty)"


def normalise(answer: str) -> str:
    """Canonical form for exact comparison: no whitespace, no ``$`` (or ``\\$``), no trailing ``.``
    or ``.0``, and no thousands separators.

    Commas are dropped only when the whole answer is one number written with thousands
    separators (``1,000``, ``-12,345,678.5``, ``1{,}000``): a first group of one to three digits,
    then groups of exactly three, no space around the commas. Every other comma separates items
    (``(1,5)``, ``[1, 2]``, ``2, 3``) and is kept: ``(1,5)`` -> ``(1,5)``, ``2, 3`` -> ``2,3``.
    """
    a = answer.replace("\\$", "").replace("$", "").replace("{,}", ",").strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(a):
        a = a.replace(",", "")
    a = re.sub(r"\s+", "", a)
    if re.fullmatch(r"-?\d+\.0+", a):
        a = a.split(".")[0]
    return a


def committed_answer(response: str) -> str | None:
    """The answer a response commits to, as written: its last ``\\boxed{}``; else the first token
    after its last ``####`` (GSM8K's form; ``"#### 18, so"``: ``18``); else its last number.
    Only this is verified: the rest of the text is working."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    if "####" in response:
        tail = response.split("####")[-1].split()
        return tail[0].rstrip(",") if tail else None
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def extracted_answer(response: str) -> str | None:
    """:func:`committed_answer` in the :func:`normalise` form the exact match compares."""
    committed = committed_answer(response)
    return None if committed is None else normalise(committed)


def unevaluated(committed: str, answer: str) -> bool:
    """Whether ``committed`` leaves arithmetic undone where the reference is a plain number:
    ``9 + 20`` (or ``17 \\times 17``) answers nothing when the answer is ``29``, although math-verify
    evaluates it and finds it equal. A policy finds that hole within ten RL steps by restating the
    question (measured on SmolLM2 with ``What is 9 + 20?``). Fractions (``1/2``, ``\\frac{1}{2}``)
    are values and pass; a reference that is itself an expression (``3+2\\sqrt{2}``) lets any pass."""
    return bool(_PLAIN.fullmatch(normalise(answer))) and bool(_OPERATION.search(committed))


def exact_match(got: str | None, answer: str) -> bool:
    """Whether an extracted answer equals the reference after :func:`normalise` (an empty
    answer, such as that of an empty ``\\boxed{}``, matches nothing)."""
    return bool(got) and got == normalise(answer)


def run_with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """``fn()`` run in a daemon thread, waited for at most ``timeout`` seconds.

    Python cannot stop a thread, so a call that overruns keeps running in the background
    until it returns; being a daemon it never blocks interpreter exit. Safe from any thread.

    Raises:
        TimeoutError: ``fn`` did not return within ``timeout`` seconds.
        Exception: whatever ``fn`` raised.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # handed to the caller
            outcome["error"] = err

    worker = threading.Thread(target=target, name="cepo-verify", daemon=True)
    worker.start()
    worker.join(timeout)
    if "error" in outcome:
        raise outcome["error"]
    if "value" not in outcome:
        raise TimeoutError(f"no result within {timeout:g}s")
    return outcome["value"]


class _CepoTimesMathVerify(logging.Filter):
    """Drops math-verify's "Timeout is disabled ..." warning: cepo calls it with its own timeouts
    off on purpose and bounds every call with :func:`run_with_timeout` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@lru_cache(maxsize=1)
def _quiet_math_verify_timeout_warning() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_CepoTimesMathVerify())


@lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> list:
    """The reference parsed once (cached): boxed, so bare LaTeX like ``\\frac{1}{2}`` parses."""
    from math_verify import parse

    _quiet_math_verify_timeout_warning()
    return parse(f"\\boxed{{{answer}}}", parsing_timeout=None, raise_on_error=True)


def math_verify_equal(response: str, answer: str) -> bool:
    """math-verify's verdict on ``response`` against the reference ``answer``, without its
    signal-based timeouts (so callable off the main thread; bound it with
    :func:`run_with_timeout`). What math-verify extracts as the answer must not leave arithmetic
    undone (:func:`unevaluated`): it would evaluate ``9 + 20 =`` to 29. Raises on a parse or
    verification error."""
    from math_verify import parse, verify

    _quiet_math_verify_timeout_warning()
    gold = _parse_gold(answer)
    pred = parse(response, parsing_timeout=None, raise_on_error=True)
    if not gold or not pred:
        return False
    if isinstance(pred[-1], str) and unevaluated(pred[-1], answer):
        return False
    return bool(verify(gold, pred, timeout_seconds=None, raise_on_error=True))


def row_messages(row: dict, where: str) -> list[dict[str, str]] | None:
    """The row's ``messages`` (validated), or None when it has none."""
    messages = row.get("messages")
    if messages is None:
        return None
    ok = (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages)
    )
    if not ok or messages[-1]["role"] != "user":
        raise ValueError(f"{where}: 'messages' must be a list of {{role, content}} turns ending with a user turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def place_images(
    prompt: str, messages: list[dict[str, str]] | None, n: int, where: str
) -> tuple[str, list[dict[str, str]] | None]:
    """The user turn (and conversation) with one ``<image>`` placeholder per image: as given when
    the user turn holds ``n`` of them, ``"<image>" * n`` prepended when it holds none.

    Raises:
        ValueError: naming ``where`` when the user turn holds another number of placeholders or
            an earlier turn holds one.
    """
    for i, turn in enumerate((messages or [])[:-1]):
        if IMAGE_PLACEHOLDER in turn["content"]:
            raise ValueError(f"{where}: {IMAGE_PLACEHOLDER} in messages[{i}]; images go in the last (user) turn")
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found == n:
        return prompt, messages
    if found == 0:
        prompt = IMAGE_PLACEHOLDER * n + prompt
        if messages is not None:
            messages = [*messages[:-1], {"role": "user", "content": prompt}]
        return prompt, messages
    raise ValueError(f"{where}: the prompt has {found} {IMAGE_PLACEHOLDER} placeholder(s) but the row has {n} image(s)")


def row_example(row: dict, where: str, base_dir: Path, prompt_template: str) -> Example:
    """The :class:`Example` of one row (its images checked and kept encoded, relative image paths
    read from ``base_dir``); raise ``ValueError`` starting with ``where`` for a bad row."""
    messages = row_messages(row, where)
    question = next((row[k] for k in QUESTION_KEYS if isinstance(row.get(k), str)), None)
    if messages is None and not question:
        raise ValueError(f"{where}: row has no question (one of {QUESTION_KEYS}, or 'messages')")
    answer = reference_answer(row)
    if answer is None:
        raise ValueError(f"{where}: row has no answer ('answer', or a \\boxed{{}} 'solution')")
    if not normalise(answer):
        raise ValueError(f"{where}: {_empty_reference(row)}")
    solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
    prompt = messages[-1]["content"] if messages else fill(prompt_template, question=question)
    images = open_images(row.get("images"), base_dir, where)
    prompt, messages = place_images(prompt, messages, len(images), where)
    return Example(prompt, answer, solution, messages, images)


def read_dataset(path: str | Path, prompt_template: str, setting: str = "task.train") -> list[Example]:
    """Load and validate the dataset at ``path`` (or ``asset:<name>``, :mod:`cepo.bases.assets`): a
    JSONL or Parquet file or a saved ``datasets`` folder (:mod:`cepo.tasks.sources`), with its rows'
    images; raise ``ValueError`` naming the file and row of a bad row, and ``setting`` with the
    path for a missing or unsupported one."""
    path = Path(assets.resolve(str(path)))
    rows = open_rows(path, setting)
    base_dir = path if path.is_dir() else path.parent
    examples = [row_example(row, where, base_dir, prompt_template) for where, row in rows]
    if not examples:
        raise ValueError(f"{path}: no rows")
    return examples


def read_jsonl(path: str | Path, prompt_template: str) -> list[Example]:
    """:func:`read_dataset` (kept under its first name: it reads Parquet and saved datasets too)."""
    return read_dataset(path, prompt_template)


class DatasetTask(Task):
    """Problems from dataset files, one per split: JSONL, Parquet, or a folder saved by Hugging
    Face ``datasets`` (``save_to_disk``), read row by row (:mod:`cepo.tasks.sources`).

    Args:
        train: path of the training split: a ``.jsonl`` or ``.parquet`` file or a saved
            ``datasets`` folder, each with the same row layouts (the module docstring).
        val: path of the validation split (defaults to none).
        test: path of the test split (defaults to none).
        prompt_template: how a question becomes the user turn; ``{question}`` is replaced (other
            braces are kept, e.g. ``... within \\boxed{}.``). Rows with ``messages`` are used as is.
            A row's ``images`` are loaded with it; the module docstring says where their
            ``<image>`` placeholders go.
        verifier: ``math_verify`` (a response is correct when its extracted answer matches
            exactly or math-verify finds it equivalent to the reference) or ``exact`` (exact
            match of the normalised extracted answer only).
        verify_timeout: seconds math-verify may spend on one response; past it (or on an
            error) the exact match decides.
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        prompt_template: str = "Question: {question}\nAnswer:",
        verifier: Literal["math_verify", "exact"] = "math_verify",
        verify_timeout: float = 5.0,
    ) -> None:
        if verifier not in ("math_verify", "exact"):
            raise ValueError(f"task.verifier must be 'math_verify' or 'exact', got {verifier!r}")
        if not verify_timeout > 0:
            raise ValueError(f"task.verify_timeout must be > 0, got {verify_timeout}")
        self.paths = {"train": train, "val": val, "test": test}
        self.settings = {k: f"task.{k}" for k in self.paths}  # named in a missing/unsupported file's error
        self.prompt_template = check(prompt_template, "task.prompt_template", ("question",))
        self.verifier = verifier
        self.verify_timeout = float(verify_timeout)

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        return {k: read_dataset(p, self.prompt_template, self.settings[k]) if p else [] for k, p in self.paths.items()}

    def validate(self) -> None:
        """Read every configured file now (fail before training)."""
        _ = self._splits

    def split(self, name: str) -> list[Example]:
        if name not in self.paths:
            raise ValueError(f"unknown split {name!r}; expected one of {sorted(self.paths)}")
        return self._splits[name]

    def extract_answer(self, response: str) -> str | None:
        return extracted_answer(response)

    def is_correct(self, response: str, answer: str) -> bool:
        """The committed answer (:func:`committed_answer`) against the reference: exact match first
        (cheap); then, with ``verifier="math_verify"``, math-verify within ``verify_timeout``
        seconds (on a timeout or an error the exact verdict, False, stands) on the last box, or on
        the text when there is none; an answer that leaves arithmetic undone (:func:`unevaluated`)
        is wrong. A response whose last ``\\boxed{}`` is empty is incorrect with either verifier."""
        committed = committed_answer(response)
        if committed is None or not normalise(committed):
            return False  # nothing, or an empty box (math-verify would read an earlier number)
        if exact_match(normalise(committed), answer):
            return True
        if self.verifier == "exact" or unevaluated(committed, answer):
            return False
        import math_verify  # noqa: F401 - the first import (~1 s, sympy) must not eat the timeout

        # a box is what the response commits to; without one math-verify finds the final answer in
        # the text (``so it is $\\frac{1}{2}$``), and math_verify_equal refuses an unevaluated one
        text = f"\\boxed{{{committed}}}" if last_boxed(response) is not None else response
        try:
            return run_with_timeout(lambda: math_verify_equal(text, answer), self.verify_timeout)
        except TimeoutError:
            log.warning("math-verify gave no verdict within %gs; counted as incorrect", self.verify_timeout)
        except Exception as err:  # a parse/verify error: the exact match (False) decides
            log.debug("math-verify failed on a response: %r", err)
        return False


JsonlTask = DatasetTask
"""The first name of :class:`DatasetTask` (which reads JSONL, Parquet and saved datasets)."""

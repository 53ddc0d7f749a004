"""Context templates: where privileged feedback goes around a prompt (one home for all of them).

A template is a string with named fields such as ``{prompt}`` and ``{feedback}``. :func:`fill`
replaces exactly those fields and nothing else, so literal braces (``\\boxed{}``, JSON) need no
escaping, unlike ``str.format``.
"""

from __future__ import annotations

RAW_TEMPLATE = "{prompt} {feedback}"
"""The feedback right after the prompt, as if it began the answer (the CEPO paper's code; the
format the built-in base learned to read in its warm-up)."""

HINT_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution:\n{feedback}\n\n"
    "After understanding the reference solution, please try to solve this problem using "
    "your own approach below.\n"
)
"""RLSD's instruction template."""

OPSD_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution to this problem:\n{feedback}\n\n"
    "Reason step by step to reach the same final answer.\n"
)
"""OPSD's teacher: the problem, the reference solution, an instruction to reach the same answer."""

SDPO_TEMPLATE = "{prompt}\n\nCorrect solution:\n\n{feedback}\n\nCorrectly solve the original question.\n"
"""SDPO's teacher: the problem and another successful attempt of the same group."""

CIPO_TEMPLATE = (
    "{prompt}{attempt}\n\nThe attempt above is wrong. Find the error and solve the problem again.\n\n{prompt}"
)
"""CIPO's correction prompt under a plain prompt format: the original prompt, the failed attempt,
an instruction, the prompt again."""

CIPO_INSTRUCTION = "The attempt above is wrong. Find the error and solve the problem again."
"""CIPO's correction request under a chat template: a user turn after the failed attempt's
assistant turn."""


def check(template: str, setting: str, fields: tuple[str, ...] = ("prompt", "feedback")) -> str:
    """Return ``template`` if it contains every ``{field}``, else raise naming ``setting``."""
    missing = [f for f in fields if "{" + f + "}" not in template]
    if missing:
        wanted = " and ".join("{" + f + "}" for f in fields)
        raise ValueError(f"{setting} must contain {wanted}, got {template!r}")
    return template


def fill(template: str, **fields: str) -> str:
    """``template`` with each ``{name}`` replaced by ``fields[name]`` (other braces kept as is).

    All fields are replaced in one left-to-right scan, so a value that itself contains
    ``{prompt}`` is not expanded again.
    """
    out, i = [], 0
    while i < len(template):
        for name, value in fields.items():
            key = "{" + name + "}"
            if template.startswith(key, i):
                out.append(value)
                i += len(key)
                break
        else:
            out.append(template[i])
            i += 1
    return "".join(out)

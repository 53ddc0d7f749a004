"""The data against the policy, before a run: images need a vision tower, prompts need room.

A run whose rows carry images for a text policy, or whose prompts cannot fit the context less
a new-token limit, stops before anything runs with one line naming the settings; when only some
of the first prompts are too long it is a warning (evaluation keeps their last tokens, training
keeps them whole). The DataModule gathers what is checked (its splits, its settings) and
calls these; ``cepo`` runs the ones that need no model before the model loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cepo.rollout.engine import RolloutEngine, SamplingConfig
from cepo.tasks import Example

CHECKED_ROWS = 64  # rows of each split whose images and prompt lengths are checked before a run
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """A new-token limit and the prompts it applies to.

    Attributes:
        setting: the setting that sets it, for messages (``data.sampling.max_new_tokens``).
        sampling: its sampling settings (``max_new_tokens``).
        what: whose prompts, for messages (``training`` or ``evaluation``).
        rows: the rows whose prompts are measured (read only once a policy exists).
    """

    setting: str
    sampling: SamplingConfig
    what: str
    rows: Callable[[], list[Example]]


def check_images(splits: list[tuple[str, list[Example]]], has_vision: bool, model: str) -> None:
    """Rows that carry images need a policy with a vision tower (a text policy would see only
    the prompts' ``<image>`` placeholders). Looks at the first rows of each ``(name, rows)``."""
    if has_vision:
        return
    for name, rows in splits:
        if any(e.images for e in rows[:CHECKED_ROWS]):
            raise ValueError(
                f"the {name} rows have images but model.model_path {model} has no vision tower "
                "(a text model); use a vision-language model (e.g. builtin-vl) or a task without images"
            )


def context_limit(engine: RolloutEngine, model_context: int | None, model: str) -> tuple[int, str] | None:
    """The tokens (prompt + response) the model and the engine accept, and what sets them."""
    limit = getattr(engine, "max_model_len", None)
    limit = limit if isinstance(limit, int) and limit > 0 else None
    if limit is not None and (model_context is None or limit < model_context):
        return limit, f"data.engine's max_model_len ({limit} tokens)"
    if model_context is None:
        return None
    return model_context, f"the model's context ({model_context} tokens, max_position_embeddings of {model})"


def check_budget(budgets: list[Budget], limit: tuple[int, str] | None) -> None:
    """The context less each new-token limit leaves at least one token for the prompt (else
    every prompt would be cut to its last token): an error naming both settings."""
    if limit is None:
        return
    context, text = limit
    for b in budgets:
        new = b.sampling.max_new_tokens
        if context - new < 1:
            raise ValueError(
                f"no room for the prompt: {text} less {b.setting} ({new}) leaves "
                f"{context - new} tokens; lower {b.setting} below {context}"
            )


def check_room(budgets: list[Budget], limit: tuple[int, str] | None, prompt_format, tokenizer) -> bool:
    """Each budget's prompts, rendered and tokenized, against the room the context leaves: none
    fitting is an error naming both settings; some too long, a warning.

    Returns:
        Whether some training prompts are too long (said here, not again at the first rollout).
    """
    if limit is None:
        return False
    context, text = limit
    long_training = False
    for b in budgets:
        new = b.sampling.max_new_tokens
        room = context - new
        texts = [prompt_format.render(prompt_format.messages(e.prompt, e.messages), tokenizer) for e in b.rows()]
        lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        long = sum(n > room for n in lengths)
        if lengths and long == len(lengths):
            raise ValueError(
                f"no room for the prompt: every {b.what} prompt checked (the first {len(lengths)}, "
                f"{min(lengths)} tokens or more) is longer than the {room} tokens {text} leaves after "
                f"{b.setting} ({new}); lower {b.setting}"
            )
        if long:
            long_training |= b.what == "training"
            log.warning(
                "%d of the first %d %s prompts are longer than the %d tokens %s leaves after %s (%d); %s",
                long,
                len(lengths),
                b.what,
                room,
                text,
                b.setting,
                new,
                "they keep their last tokens" if b.what == "evaluation" else "they are not cut",
            )
    return long_training

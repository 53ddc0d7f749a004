"""What a task is: prompt rows with a reference answer, and a verifier for responses."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Example:  # not frozen: Lightning moves batches with apply_to_collection
    """One problem.

    Attributes:
        prompt: the user turn's text: the question with the task's instruction, as the task
            formats it. The data's prompt format turns it into the text the policy continues
            (as is, or through the model's chat template).
        answer: the verified final answer, as the verifier compares it.
        solution: a reference response (used by the supervised warm-up and as a teacher
            context for feedback sources that show a full solution); may be empty.
        messages: a whole conversation before the assistant turn (``role``/``content`` dicts
            ending with a user turn), for conversational rows; None: the user turn ``prompt``.
        images: the problem's images, in the order of the ``<image>`` placeholders in ``prompt``
            (one per image); empty for text problems. Each is a PIL image, or an image kept
            encoded until a batch needs it: anything with ``decode(fit) -> PIL image``
            (:class:`cepo.tasks.images.EncodedImage`), which the policy's image handling calls
            with the size it will use the image at.
    """

    prompt: str
    answer: str
    solution: str = ""
    messages: list[dict[str, str]] | None = None
    images: list = field(default_factory=list)


IMAGE_PLACEHOLDER = "<image>"
"""Where an image goes in a prompt (the Geo3k row layout); the policy's processor replaces it by
the model's own vision tokens."""


class Task:
    """A source of :class:`Example` splits plus answer extraction and verification.

    Subclasses implement :meth:`split`, :meth:`extract_answer` and may refine :meth:`is_correct`.
    """

    def split(self, name: str) -> list[Example]:
        """The examples of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def extract_answer(self, response: str) -> str | None:
        """The final answer a response commits to, or None when it has none."""
        raise NotImplementedError

    def is_correct(self, response: str, answer: str) -> bool:
        """Whether ``response`` reaches ``answer``."""
        got = self.extract_answer(response)
        return got is not None and got == answer.strip()

    def training_solution(self, example: Example, rng: random.Random) -> str:
        """The reference response a supervised warm-up imitates for ``example`` (a task whose
        solutions vary between samples draws one from ``rng``); by default ``example.solution``."""
        return example.solution

    def reward(self, response: str, answer: str) -> float:
        """Scalar reward in [0, 1]: 1 for a correct response, else 0."""
        return float(self.is_correct(response, answer))

"""Prompt formats: how a problem's user turn becomes the text the policy continues.

A task gives each problem its user-turn text (``Example.prompt``: the question with the task's
own instruction) or a whole conversation (``Example.messages``). The *prompt format* is the
model's side: :class:`Plain` passes the user text through as is (base models, the built-in
task), :class:`Chat` renders the conversation with the tokenizer's own chat template
(``add_generation_prompt``), with an optional system prompt.

The same object adds privileged context for teachers and correction prompts, so that they stay
well-formed under a chat template:

- ``assistant`` placement: the feedback is spliced right after the rendered prompt, at the start
  of the assistant turn (the CEPO paper's ``raw`` teacher: ``"{prompt} {feedback}"``);
- ``user`` placement: the template wraps the user turn's text and the chat is rendered again
  (RLSD's ``hint`` instruction, OPSD/SDPO teacher prompts);
- corrections: the failed attempt becomes an assistant turn followed by a user turn asking for a
  correction (:meth:`PromptFormat.correction`; plain formats fill a one-string template).

Templates are filled with :func:`cepo.prompts.templates.fill`, so literal braces need no escaping.
"""

from __future__ import annotations

from typing import Literal

from cepo.prompts.templates import fill
from cepo.vision import PLACEHOLDER

Message = dict[str, str]
Placement = Literal["assistant", "user"]


class PromptFormat:
    """Base class: renders conversations and adds privileged context to them."""

    def messages(self, prompt: str, messages: list[Message] | None = None) -> list[Message]:
        """The conversation before the assistant turn: ``messages`` if the row has them, else the
        user turn ``prompt``."""
        return list(messages) if messages else [{"role": "user", "content": prompt}]

    def render(self, messages: list[Message], tokenizer) -> str:
        """The text the policy continues."""
        raise NotImplementedError

    def with_feedback(
        self, messages: list[Message], template: str, placement: Placement, tokenizer, **fields: str
    ) -> str:
        """The prompt with privileged context: ``template`` (with ``{prompt}`` and ``fields``)
        filled with the rendered prompt (``assistant``) or with the user turn's text (``user``)."""
        if placement == "assistant":
            return fill(template, prompt=self.render(messages, tokenizer), **fields)
        if placement != "user":
            raise ValueError(f"placement must be 'assistant' or 'user', got {placement!r}")
        user = fill(template, prompt=messages[-1]["content"], **fields)
        return self.render(messages[:-1] + [{"role": "user", "content": user}], tokenizer)

    def correction(self, messages: list[Message], attempt: str, template: str, instruction: str) -> list[Message]:
        """The conversation asking to correct ``attempt``, a failed response to ``messages``."""
        raise NotImplementedError


def keep_first(text: str, piece: str, n: int) -> str:
    """``text`` with only the first ``n`` occurrences of ``piece`` kept."""
    head, *rest = text.split(piece)
    return head + "".join((piece if i < n else "") + part for i, part in enumerate(rest))


class Plain(PromptFormat):
    """The user turn's text as is (no chat markup); a system prompt, if a row has one, is dropped."""

    def render(self, messages: list[Message], tokenizer) -> str:
        return messages[-1]["content"]

    def correction(self, messages: list[Message], attempt: str, template: str, instruction: str) -> list[Message]:
        """One user turn: ``template`` filled with the prompt and the attempt (``{prompt}``, ``{attempt}``).
        A template that restates the prompt shows its images once: placeholders past the prompt's
        own count are dropped from the restatement (a policy expects one image per placeholder)."""
        prompt = messages[-1]["content"]
        text = fill(template, prompt=prompt, attempt=attempt)
        return [{"role": "user", "content": keep_first(text, PLACEHOLDER, prompt.count(PLACEHOLDER))}]

    def __repr__(self) -> str:
        return "Plain()"


class Chat(PromptFormat):
    """The tokenizer's own chat template, with a generation prompt for the assistant turn.

    Args:
        system: a system prompt put first (None: whatever the model's template does with none).
    """

    def __init__(self, system: str | None = None) -> None:
        self.system = system

    def messages(self, prompt: str, messages: list[Message] | None = None) -> list[Message]:
        out = super().messages(prompt, messages)
        if self.system is not None and out[0]["role"] != "system":
            out = [{"role": "system", "content": self.system}] + out
        return out

    def render(self, messages: list[Message], tokenizer) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("data.prompt_format is Chat but the tokenizer has no chat template (use Plain)")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def correction(self, messages: list[Message], attempt: str, template: str, instruction: str) -> list[Message]:
        """The conversation, the attempt as the assistant's turn, then ``instruction`` as the user's."""
        return messages + [{"role": "assistant", "content": attempt}, {"role": "user", "content": instruction}]

    def __repr__(self) -> str:
        return f"Chat(system={self.system!r})"

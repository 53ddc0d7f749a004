"""Prompts: how a problem becomes the text a model reads.

- :mod:`.formats`: the prompt format of rollouts (``Plain`` text, or the model's own ``Chat``
  template) and where privileged context goes in it;
- :mod:`.templates`: every context template (the teachers' ``c+``/``c-``, OPSD, SDPO, CIPO) and
  ``fill`` (no ``str.format``: literal braces need no escaping).

Choose a format in YAML with ``data.prompt_format: {class_path: cepo.prompts.Chat}``.
"""

from cepo.prompts.formats import Chat, Plain, PromptFormat

__all__ = ["Chat", "Plain", "PromptFormat"]

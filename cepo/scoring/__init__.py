"""Scoring: running packed rows through a model and reading log-probs, entropies and logits back.

- :mod:`.scorer`: the one micro-batched scoring loop (:class:`Scorer`, :class:`Packed`), for the
  training pass and every no-grad pass;
- :mod:`.microbatch`: which rows go through one pass together (by rows, by a token budget);
- :mod:`.prefix`: token tries, so rows that begin alike share the no-grad work of their prefix;
- :mod:`.shared_prompt`: one pass over a group's prompt for all its rows, gradients included;
- :mod:`.logprobs`: log-probs and entropies in float32 chunks, the LM head at read positions only.
"""

from cepo.scoring.scorer import SHARE_BELOW, Packed, Scorer

__all__ = ["SHARE_BELOW", "Packed", "Scorer"]

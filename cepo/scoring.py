"""The one micro-batched scoring loop: log-probs, entropies and logits of packed responses.

The policy's own no-grad passes (old log-probs, student evidence), the teacher passes and the
distillation logits all run packed ``[left-padded context | right-padded response]`` rows
through a model, a few rows at a time. :class:`Scorer` plans those rows with
:mod:`cepo.microbatch` (grouped by length, each pass trimmed to its longest row) and reads the
results back at the response positions only. Values past a row's response are 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cepo import microbatch
from cepo.logprobs import response_logits, token_entropy, token_logprobs


@dataclass
class Packed:
    """Rows to score (``cepo.rollout.batch.pack`` layout).

    Attributes:
        input_ids: ``[N, L]`` context + response token ids.
        attention_mask: ``[N, L]``.
        start: column of the first response token.
        mask: ``[N, T]`` bool response tokens.
        temperature: logits are divided by it, so log-probs match the sampled distribution.
        images: per row, the images its prompt holds (None: none), for a vision-language policy.
        vision: the policy's image handling (builds the forward inputs of rows with images).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start: int
    mask: torch.Tensor
    temperature: float = 1.0
    images: list | None = None
    vision: object | None = None

    def model_inputs(self, model: torch.nn.Module, rows: torch.Tensor):
        """The ``model_inputs`` callable of :func:`~cepo.logprobs.response_logits` for ``rows``
        (None when they hold no image)."""
        if self.vision is None or self.images is None:
            return None
        images = [self.images[i] for i in rows.tolist()]
        if not any(im is not None for im in images):
            return None
        return lambda ids, mask, start: self.vision.model_inputs(model, ids, mask, start, images)


class Scorer:
    """No-grad scoring of packed rows in micro-batches.

    Args:
        micro_batch_size: rows per forward pass (0: all requested rows at once).
    """

    def __init__(self, micro_batch_size: int = 0) -> None:
        if micro_batch_size < 0:
            raise ValueError(f"micro_batch_size must be >= 0, got {micro_batch_size}")
        self.micro_batch_size = micro_batch_size

    def plan(self, rows: Packed, index: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Micro-batches of the rows ``index`` (default all), grouped by length."""
        if index is None:
            index = torch.arange(rows.input_ids.shape[0], device=rows.input_ids.device)
        return microbatch.plan(index, rows.attention_mask, rows.start, self.micro_batch_size)

    def passes(
        self, model: torch.nn.Module, rows: Packed, chunks: list[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        """``(rows [n], width, logits [n, width, V])`` for each planned micro-batch of ``chunks``
        (from :meth:`plan`); gradients flow if enabled."""
        start = rows.start
        for r in chunks:
            width = microbatch.response_width(rows.mask, r)
            ids, mask = rows.input_ids[r, : start + width], rows.attention_mask[r, : start + width]
            logits = response_logits(model, ids, mask, start, rows.temperature, rows.model_inputs(model, r))
            if rows.vision is not None and rows.vision.banned:  # never sampled: not in the policy
                logits = logits.index_fill(-1, torch.tensor(rows.vision.banned, device=logits.device), -1e9)
            yield r, width, logits

    @torch.no_grad()
    def logprobs(
        self, model: torch.nn.Module, rows: Packed, index: torch.Tensor | None = None, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``([N, T]`` log-probs of the response tokens, ``[N, T]`` entropies or None).

        Only the rows ``index`` (default all) are computed; the others stay 0.
        """
        lp = torch.zeros(rows.mask.shape, device=rows.mask.device)
        ent = torch.zeros(rows.mask.shape, device=rows.mask.device) if entropy else None
        for r, width, logits in self.passes(model, rows, self.plan(rows, index)):
            lp[r, :width] = token_logprobs(logits, rows.input_ids[r, rows.start : rows.start + width])
            if ent is not None:
                ent[r, :width] = token_entropy(logits)
        zero = torch.zeros_like(lp)
        return torch.where(rows.mask, lp, zero), None if ent is None else torch.where(rows.mask, ent, zero)

    @torch.no_grad()
    def logits(self, model: torch.nn.Module, rows: Packed) -> torch.Tensor:
        """``[N, T, V]`` float32 logits at each response position (full vocabulary; 0 past the end)."""
        out = None
        for r, width, logits in self.passes(model, rows, self.plan(rows)):
            if out is None:
                out = torch.zeros(*rows.mask.shape, logits.shape[-1], device=rows.mask.device)
            out[r, :width] = logits.float()
        return torch.where(rows.mask[..., None], out, torch.zeros_like(out))

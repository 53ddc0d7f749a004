"""The one micro-batched scoring loop: log-probs, entropies and logits of packed responses.

The policy's own no-grad passes (old log-probs, student evidence), the teacher passes and the
distillation logits all run packed ``[left-padded context | right-padded response]`` rows
through a model, a few rows at a time. :class:`Scorer` plans those rows with
:mod:`cepo.scoring.microbatch` (grouped by length, each pass trimmed to its longest row) and reads the
results back at the response positions only. Values past a row's response are 0.

Log-probs and entropies of text rows are computed over shared prefixes (:mod:`cepo.scoring.prefix`): the
rows are merged into token tries, so the prompt of a group's rollouts, the prompt of its ``c+`` and
``c-`` contexts and identical response beginnings are run once. This needs a model that takes a
custom 4D attention mask with explicit positions (``sdpa`` or ``eager`` attention); the first
rows of each model type whose trie branches are scored both ways, and sharing stays off for it
unless they agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cepo import distributed
from cepo.scoring import microbatch, prefix, shared_prompt
from cepo.scoring.logprobs import head_at, response_logits, token_entropy, token_logprobs

log = logging.getLogger(__name__)

SHARE_BELOW = 0.8
"""Shared prefixes are used when the trie holds at most this fraction of the rows' positions
(below it, the saved positions pay for the longer attention of the packed sequences)."""


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
        """The ``model_inputs`` callable of :func:`~cepo.scoring.logprobs.response_logits` for ``rows``
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
        micro_batch_size: rows per forward pass (0: all requested rows at once). A pass over
            shared prefixes holds about as many positions as this many of its rows.
        share_prefixes: compute log-probs and entropies of text rows over shared prefixes.
        shared_len: positions per packed sequence of shared prefixes (at least the longest row).
        max_tokens: padded tokens per forward pass (None: no limit): rows join a micro-batch while
            it holds at most this many (at least one row, :func:`cepo.scoring.microbatch.plan`); a pass over
            shared prefixes holds at most this many positions (at least one packed sequence).
        share_prompts: in :meth:`passes` (the training pass, the full-logit passes, images), run
            each distinct context of a micro-batch once for all its rows
            (:mod:`cepo.scoring.shared_prompt`), once found equal to plain passes on the model type.
    """

    def __init__(
        self,
        micro_batch_size: int = 0,
        share_prefixes: bool = True,
        shared_len: int = 128,
        max_tokens: int | None = None,
        share_prompts: bool = True,
    ) -> None:
        if micro_batch_size < 0:
            raise ValueError(f"micro_batch_size must be >= 0, got {micro_batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (or None), got {max_tokens}")
        self.micro_batch_size = micro_batch_size
        self.max_tokens = max_tokens
        self.share_prefixes = share_prefixes
        self.shared_len = shared_len
        self.checked: dict[tuple, bool] = {}  # (model type, attention) -> sharing agreed with plain passes
        self.share_prompts = share_prompts
        self.prompts_checked: dict[tuple, bool] = {}  # the same for shared contexts (shared_prompt)

    def plan(
        self, rows: Packed, index: torch.Tensor | None = None, model: torch.nn.Module | None = None
    ) -> list[torch.Tensor]:
        """Micro-batches of the rows ``index`` (default all), grouped by length; with ``model``,
        each context's rows kept together where :meth:`passes` will share contexts on it."""
        if index is None:
            index = torch.arange(rows.input_ids.shape[0], device=rows.input_ids.device)
        contexts = self._contexts(rows, index) if self.shares_prompts(model, rows, index) else None
        return microbatch.plan(
            index,
            rows.attention_mask,
            rows.start,
            self.micro_batch_size,
            max_tokens=self.max_tokens,
            contexts=contexts,
        )

    def passes(
        self, model: torch.nn.Module, rows: Packed, chunks: list[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        """``(rows [n], width, logits [n, width, V])`` for each planned micro-batch of ``chunks``
        (from :meth:`plan`); gradients flow if enabled."""
        start = rows.start
        shared = bool(chunks) and self.shares_prompts(model, rows, torch.cat(chunks))
        for r in chunks:
            width = microbatch.response_width(rows.mask, r)
            ids, mask = rows.input_ids[r, : start + width], rows.attention_mask[r, : start + width]
            if shared:
                logits = self._prompt_logits(model, rows, r, ids, mask)
            else:
                logits = response_logits(model, ids, mask, start, rows.temperature, rows.model_inputs(model, r))
            if rows.vision is not None and rows.vision.banned:  # never sampled: not in the policy
                logits = logits.index_fill(-1, torch.tensor(rows.vision.banned, device=logits.device), -1e9)
            yield r, width, logits

    # -- shared contexts (the passes with gradients, full logits, images) ----------------------
    def _contexts(self, rows: Packed, index: torch.Tensor) -> list[int]:
        images = None if rows.images is None else [rows.images[i] for i in index.tolist()]
        return shared_prompt.contexts(rows.input_ids[index], rows.attention_mask[index], rows.start, images)

    def _prompt_logits(self, model, rows: Packed, r: torch.Tensor, ids, mask) -> torch.Tensor:
        of = self._contexts(rows, r)
        firsts = torch.tensor([of.index(c) for c in range(max(of) + 1)], device=r.device)
        inputs = rows.model_inputs(model, r[firsts])
        return shared_prompt.prompt_logits(model, ids, mask, rows.start, rows.temperature, inputs, of)

    def shares_prompts(self, model: torch.nn.Module | None, rows: Packed, index: torch.Tensor) -> bool:
        """Whether :meth:`passes` runs each context of ``index``'s micro-batches once on
        ``model``: on unless switched off, under transformers' gradient checkpointing (which
        drops the cache it needs), on an FSDP-sharded model, or once found to disagree with plain
        passes on the model type. The first rows of a model type that share a context are scored both ways (no gradient,
        eval mode) and decide it."""
        if not self.share_prompts or model is None or getattr(model, "is_gradient_checkpointing", False):
            return False
        if distributed.is_sharded(model):
            # FSDP gathers and reduces at each forward's modules: the ranks' passes must match
            # forward for forward, which a rank's own choice of sharing (and its check) cannot promise
            return False
        config = getattr(model, "config", None)
        key = (getattr(config, "model_type", type(model).__name__), getattr(config, "_attn_implementation", None))
        if key in self.prompts_checked:
            return self.prompts_checked[key]
        of = self._contexts(rows, index)
        shared = [c for c in set(of) if of.count(c) > 1]
        if not shared:
            return False  # nothing to share yet: decided on rows that share a context
        pair = [k for k, c in enumerate(of) if c == min(shared)][:2]
        r = index[torch.tensor(pair, device=index.device)]
        width = microbatch.response_width(rows.mask, r)
        ids, mask = rows.input_ids[r, : rows.start + width], rows.attention_mask[r, : rows.start + width]
        training = model.training
        try:
            model.eval()
            with torch.no_grad():
                plain = response_logits(model, ids, mask, rows.start, 1.0, rows.model_inputs(model, r))
                try:
                    shared = self._prompt_logits(model, rows, r, ids, mask)
                except (TypeError, ValueError, RuntimeError, AttributeError) as e:  # no cache, no use_cache
                    shared, why = None, f"{type(e).__name__}: {e}"
        finally:
            model.train(training)
        if shared is not None:
            targets = ids[:, rows.start :]
            gap = (token_logprobs(plain, targets) - token_logprobs(shared, targets)).abs()[rows.mask[r, :width]]
            tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 0.1
            why = f"log-probs differ by {float(gap.max()):.2g}"
        self.prompts_checked[key] = agrees = shared is not None and bool(gap.max() <= tol)
        if not agrees:
            log.warning("scoring: shared contexts disagree with plain passes on %s (%s); not sharing", key, why)
        return agrees

    @torch.no_grad()
    def logprobs(
        self, model: torch.nn.Module, rows: Packed, index: torch.Tensor | None = None, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``([N, T]`` log-probs of the response tokens, ``[N, T]`` entropies or None).

        Only the rows ``index`` (default all) are computed; the others stay 0.
        """
        lp = torch.zeros(rows.mask.shape, device=rows.mask.device)
        ent = torch.zeros(rows.mask.shape, device=rows.mask.device) if entropy else None
        if index is None:
            index = torch.arange(rows.input_ids.shape[0], device=rows.input_ids.device)
        shared = self._shared(model, rows, index)
        if shared is not None:
            self._score_shared(model, rows, *shared, lp, ent)
        else:
            for r, width, logits in self.passes(model, rows, self.plan(rows, index, model)):
                lp[r, :width] = token_logprobs(logits, rows.input_ids[r, rows.start : rows.start + width])
                if ent is not None:
                    ent[r, :width] = token_entropy(logits)
        zero = torch.zeros_like(lp)
        return torch.where(rows.mask, lp, zero), None if ent is None else torch.where(rows.mask, ent, zero)

    # -- shared prefixes -------------------------------------------------------------
    def _shared(self, model: torch.nn.Module, rows: Packed, index: torch.Tensor):
        """``(layout, row indices, context lengths, token rows)`` to score ``index`` over shared
        prefixes, or None where that does not apply, saves too little, or has not been found to
        agree with plain passes on this model type."""
        config = getattr(model, "config", None)
        attention = getattr(config, "_attn_implementation", None)
        if not self.share_prefixes or attention not in ("sdpa", "eager") or rows.vision is not None:
            return None
        key = (getattr(config, "model_type", type(model).__name__), attention)
        if self.checked.get(key) is False:
            return None
        shared = self._lay_out(config, rows, index)
        if shared is not None and key not in self.checked:
            # check on a unit that branches (its masks and positions differ from a plain row's);
            # where none does, every unit is one plain row and only the mask's form is checked
            lay = shared[0]
            branching = [u for u, unit in enumerate(lay.units) if any(e < len(unit) for e in unit.ends)]
            unit = branching[0] if branching else 0
            check = [row for row, u in zip(shared[1], lay.unit) if u == unit][:16]
            agrees = self._agrees(model, rows, torch.as_tensor(check, device=index.device))
            if agrees and branching:
                self.checked[key] = True
            elif not agrees:
                self.checked[key] = False
                log.warning("scoring: shared prefixes disagree with plain passes on %s; not sharing", key)
                return None
        return shared

    def _lay_out(self, config, rows: Packed, index: torch.Tensor, least_saving: float = 1 - SHARE_BELOW):
        """The shared-prefix layout of the rows ``index`` with a response (see :meth:`_shared`),
        or None when it does not save ``least_saving`` of their positions."""
        ctx_len = rows.attention_mask[index, : rows.start].sum(1).tolist()
        resp_len = rows.mask[index].sum(1).tolist()
        keep = [k for k in range(len(ctx_len)) if resp_len[k] > 0]
        if not keep or any(ctx_len[k] == 0 for k in keep):
            return None
        ids, start = rows.input_ids[index].tolist(), rows.start
        seqs = [ids[k][start - ctx_len[k] : start + resp_len[k]] for k in keep]
        lay = prefix.layout(seqs, max(self.shared_len, max(len(s) for s in seqs)))
        window = getattr(config, "sliding_window", None)
        if window is not None and max(len(u) for u in lay.units) > window:
            return None
        if lay.size > (1 - least_saving) * sum(len(s) - 1 for s in seqs):
            return None
        return lay, index[keep].tolist(), [ctx_len[k] for k in keep], seqs

    def _agrees(self, model: torch.nn.Module, rows: Packed, index: torch.Tensor) -> bool:
        """Whether the rows ``index`` score the same over shared prefixes as in plain passes."""
        shared = self._lay_out(model.config, rows, index, least_saving=0.0)
        if shared is None:
            return False
        plain = Scorer(self.micro_batch_size, False, max_tokens=self.max_tokens).logprobs(model, rows, index)[0]
        got = torch.zeros_like(plain)
        self._score_shared(model, rows, *shared, got, None)
        tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 0.1
        return bool(((got - plain).abs() * rows.mask).max() <= tol)

    def _score_shared(self, model, rows: Packed, lay: prefix.Layout, row_ids, ctx_len, seqs, lp, ent) -> None:
        """Fill ``lp`` (and ``ent``) at the rows ``row_ids`` from passes over ``lay``'s units."""
        device = rows.mask.device
        by_unit: dict[int, list[int]] = {}
        for k, u in enumerate(lay.unit):
            by_unit.setdefault(u, []).append(k)
        # a pass holds about as many positions as micro_batch_size of these rows
        budget = self.micro_batch_size * sum(len(s) for s in seqs) // len(seqs)
        if self.max_tokens is not None:  # and at most max_tokens positions
            budget = min(budget, self.max_tokens) if budget else self.max_tokens
        dtype = next(model.parameters()).dtype
        for units in prefix.plan_units(lay.units, budget):
            ids, pos, allowed = prefix.unit_inputs([lay.units[u] for u in units], 0, device)
            # additive (eager and sdpa both take it), made once for every layer
            attention = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
            at_unit, at_node, at_row, at_col, targets = [], [], [], [], []
            for b, u in enumerate(units):
                for k in by_unit[u]:
                    s, c = seqs[k], ctx_len[k]
                    n = len(s) - c  # response tokens, predicted by the nodes of s[:c] .. s[:-1]
                    at_unit += [b] * n
                    at_node += lay.nodes[k][c - 1 :]
                    at_row += [row_ids[k]] * n
                    at_col += range(n)
                    targets += s[c:]
            read = (torch.tensor(at_unit, device=device), torch.tensor(at_node, device=device))
            # the LM head runs on the positions read only: [1, P, V]
            with head_at(model, lambda hidden: hidden[read][None]) as selected:
                logits = model(input_ids=ids, attention_mask=attention, position_ids=pos).logits
            picked = logits[0] if selected else logits[read]
            if rows.temperature != 1.0:
                picked = picked / rows.temperature
            where = (torch.tensor(at_row, device=device), torch.tensor(at_col, device=device))
            lp[where] = token_logprobs(picked[None], torch.tensor(targets, device=device)[None])[0]
            if ent is not None:
                ent[where] = token_entropy(picked)

    @torch.no_grad()
    def logits(self, model: torch.nn.Module, rows: Packed) -> torch.Tensor:
        """``[N, T, V]`` logits at each response position (full vocabulary; 0 past the end), in the
        model's own output dtype: a bfloat16 model's logits are not copied to float32 (that copy
        would double the largest tensor of a distillation step); the divergences upcast one
        micro-batch at a time. Masked in place, so the peak is one ``[N, T, V]`` tensor."""
        out = None
        for r, width, logits in self.passes(model, rows, self.plan(rows, model=model)):
            if out is None:
                shape = (*rows.mask.shape, logits.shape[-1])
                out = torch.zeros(shape, dtype=logits.dtype, device=rows.mask.device)
            out[r, :width] = logits
        return out.masked_fill_(~rows.mask[..., None], 0)

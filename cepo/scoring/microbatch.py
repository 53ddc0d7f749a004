"""Micro-batch planning: which rows go through one forward pass together, and how wide it is.

The trainer's forward and backward passes are compute-bound on the sequence tokens they are
given, padding included. Rows of one rollout batch differ in length (a few rollouts run to
``max_new_tokens`` while most stop early), so grouping rows of similar length and trimming each
micro-batch to its own longest row removes most of the padding. Rows whose loss is identically
zero (a zero token advantage everywhere and no other loss term) can be left out altogether:
their gradient is exactly zero.

None of this changes the gradient of a mini-batch: the loss is a sum over rows whose
normaliser is computed from the masks of the whole mini-batch, not from the micro-batches.
"""

from __future__ import annotations

import torch


def row_lengths(attention_mask: torch.Tensor, response_start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N] prompt lengths, [N] response lengths)`` of ``[left-padded prompt | response]`` rows."""
    prompt = attention_mask[:, :response_start].sum(1)
    response = attention_mask[:, response_start:].sum(1)
    return prompt, response


def plan(
    rows: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    size: int,
    sort: bool = True,
    max_tokens: int | None = None,
    contexts: list[int] | None = None,
) -> list[torch.Tensor]:
    """Split ``rows`` into micro-batches of at most ``size`` rows (0: one micro-batch) and, with
    ``max_tokens``, at most that many padded tokens (:func:`padded_tokens`; at least one row).

    Args:
        rows: ``[n]`` row indices to run (e.g. the rows of a mini-batch that carry a loss).
        attention_mask: ``[N, L]`` the batch's attention mask.
        response_start: column where responses begin.
        size: rows per micro-batch (0: no limit on rows).
        sort: order rows by total length first so that each micro-batch pads little.
        max_tokens: padded tokens per micro-batch (None: no limit on tokens). Consecutive rows
            (in length order) join a micro-batch while its rows times its longest prompt plus its
            longest response stay within it.
        contexts: per row of ``rows``, its context (``cepo.scoring.shared_prompt.contexts``), for passes
            that run each distinct context once: a context's rows are kept together (in length
            order) and a micro-batch's tokens are :func:`shared_tokens`.

    Returns:
        ``[n_i]`` index tensors covering ``rows`` exactly once.
    """
    if rows.numel() == 0:
        return []
    if contexts is not None:
        return _plan_shared(rows, attention_mask, response_start, size, max_tokens, contexts)
    if sort:
        prompt, response = row_lengths(attention_mask[rows], response_start)
        rows = rows[torch.argsort(prompt + response, stable=True)]
    if max_tokens is None:
        return list(torch.split(rows, size or rows.numel()))
    prompt, response = (x.tolist() for x in row_lengths(attention_mask[rows], response_start))
    chunks, begin, longest_prompt, longest_response = [], 0, 0, 0
    for k in range(len(prompt)):
        p, r = max(longest_prompt, prompt[k]), max(longest_response, response[k])
        n = k - begin + 1
        if n > 1 and (padded_tokens(n, p, r) > max_tokens or (size and n > size)):
            chunks.append(rows[begin:k])
            begin, p, r = k, prompt[k], response[k]
        longest_prompt, longest_response = p, r
    chunks.append(rows[begin:])
    return chunks


def _plan_shared(rows, attention_mask, response_start, size, max_tokens, contexts) -> list[torch.Tensor]:
    """:func:`plan` with ``contexts``: rows in order of (prompt length, context, response length)."""
    prompt, response = (x.tolist() for x in row_lengths(attention_mask[rows], response_start))
    order = sorted(range(len(contexts)), key=lambda k: (prompt[k], contexts[k], response[k]))
    chunks: list[list[int]] = []
    seen: set[int] = set()
    p = r = 0
    for k in order:
        fits = False
        if chunks:
            n, c = len(chunks[-1]) + 1, len(seen | {contexts[k]})
            grown_p, grown_r = max(p, prompt[k]), max(r, response[k])
            fits = (not size or n <= size) and (
                max_tokens is None or shared_tokens(c, n, grown_p, grown_r) <= max_tokens
            )
        if fits:
            p, r = grown_p, grown_r
        else:
            chunks.append([])
            seen, p, r = set(), prompt[k], response[k]
        chunks[-1].append(k)
        seen.add(contexts[k])
    return [rows[torch.tensor(c, device=rows.device)] for c in chunks]


def shared_tokens(contexts: int, rows: int, prompt: int, response: int) -> int:
    """Positions a micro-batch runs when each of its ``contexts`` distinct contexts runs once
    (``prompt`` columns, its longest) and its ``rows`` responses run against them (``response``
    columns, its longest)."""
    return contexts * max(prompt, 1) + rows * max(response, 1)


def padded_tokens(rows: int, prompt: int, response: int) -> int:
    """Positions a micro-batch of ``rows`` rows runs, its longest prompt and longest response
    being ``prompt`` and ``response`` tokens: each row is trimmed to that width (at least one
    prompt column and one response column)."""
    return rows * (max(prompt, 1) + max(response, 1))


def response_width(response_mask: torch.Tensor, index: torch.Tensor) -> int:
    """Response columns the rows ``index`` need (their longest response; at least 1)."""
    if index.numel() == 0:
        return 1
    return max(int(response_mask[index].sum(1).max()), 1)


def loss_rows(
    mb: slice, token_adv: torch.Tensor, pg_weight: float = 1.0, active: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices of the rows of mini-batch ``mb`` whose loss is not identically zero.

    A row with zero token advantages everywhere (a group whose rewards are all equal, under every
    credit rule) contributes exactly zero gradient to the surrogate; with ``pg_weight`` 0 no row
    does; rows in ``active`` (``[N]`` bool) carry an objective's term. (With a KL term every row
    carries a loss: the caller keeps them all.)
    """
    rows = torch.arange(mb.start, mb.stop, device=token_adv.device)
    keep = token_adv[mb].ne(0).any(1)
    if pg_weight == 0:
        keep = torch.zeros_like(keep)
    if active is not None:
        keep |= active[mb]
    return rows[keep]

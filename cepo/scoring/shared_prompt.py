"""One pass over a group's prompt for all its rollouts, in the pass that carries gradients.

The ``G`` rollouts of a prompt share their context token for token (and image for image). A plain
forward pass over ``[context | response]`` rows computes that context ``G`` times, and so does its
backward. Here the distinct contexts of a micro-batch run once (:func:`prompt_logits`), keeping
their keys and values; the responses then run against those keys and values, each row indexing
its context's (an index, so the backward sums the rows' gradients into the one context pass).
Under causal attention this is the same function of the weights as the plain pass: every
response position attends to exactly the keys it would attend to in its own row, at the same
rotary positions. Only the order of floating-point sums differs.

This is the KV-cache form of what Prefix Grouper (arXiv 2506.05433) does with a split attention:
it needs no custom attention kernel, so it works for every transformers decoder (text and the
Qwen-VL families) and every attention implementation. It needs the model to keep its cache in
training mode: transformers' gradient checkpointing drops it, and the callers fall back to plain
passes there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cepo.scoring.logprobs import head_at


def contexts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int, images: list | None = None
) -> list[int]:
    """Per row, the index of its context among the distinct contexts of the rows (first seen,
    first numbered): rows share a context when its tokens, and the image objects it holds, are
    the same. Rows with an empty context get their own."""
    ids, mask = input_ids[:, :start].tolist(), attention_mask[:, :start].tolist()
    seen: dict[tuple, int] = {}
    out = []
    for i, (row, keep) in enumerate(zip(ids, mask)):
        tokens = tuple(t for t, m in zip(row, keep) if m)
        key = (tokens, id(images[i]) if images is not None else None) if tokens else ("row", i)
        out.append(seen.setdefault(key, len(seen)))
    return out


def prompt_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    temperature: float = 1.0,
    model_inputs: Callable[[torch.Tensor, torch.Tensor, int], dict] | None = None,
    context_of: list[int] | None = None,
) -> torch.Tensor:
    """Logits that predict the response tokens ``input_ids[:, start:]``, each distinct context
    run once: the same values as :func:`cepo.scoring.logprobs.response_logits` (gradients included).

    Args:
        model: a causal LM returning ``.logits`` and ``.past_key_values`` (``use_cache=True``).
        input_ids: ``[N, L]`` left-padded contexts followed by right-padded responses.
        attention_mask: ``[N, L]``.
        start: column where responses begin.
        temperature: the logits are divided by it.
        model_inputs: ``(input_ids, attention_mask, start) -> kwargs`` of the contexts' pass
            (images, multimodal rotary positions; see ``response_logits``), called on the distinct
            contexts' rows in order of first appearance; None: ``cumsum(mask) - 1`` positions.
        context_of: per row, its context (:func:`contexts`; computed when None).

    Returns:
        ``[N, T, V]`` with ``T = L - start``.
    """
    if context_of is None:
        context_of = contexts(input_ids, attention_mask, start)
    device = input_ids.device
    first = {}
    for row, c in enumerate(context_of):
        first.setdefault(c, row)
    firsts = torch.tensor([first[c] for c in sorted(first)], device=device)
    of = torch.tensor(context_of, device=device)
    # the columns of left padding every context shares are not run
    ctx_mask = attention_mask[firsts, :start]
    lead = int((ctx_mask.sum(0) == 0).long().cumprod(0).sum())
    ctx_ids, ctx_mask = input_ids[firsts, lead:start], ctx_mask[:, lead:]
    if model_inputs is None:
        kwargs = {"position_ids": (ctx_mask.long().cumsum(-1) - 1).clamp(min=0)}
    else:
        kwargs = model_inputs(ctx_ids, ctx_mask, start - lead)
    with head_at(model, lambda hidden: hidden[:, -1:]) as selected:
        out = model(input_ids=ctx_ids, attention_mask=ctx_mask, use_cache=True, **kwargs)
    first_logits = out.logits if selected else out.logits[:, -1:]  # [C, 1, V]: each response's first token
    width = input_ids.shape[1] - start
    logits = first_logits[of]
    if width > 1:
        cache = out.past_key_values
        if cache is None or cache.get_seq_length() != ctx_ids.shape[1]:
            raise RuntimeError("the model kept no cache of the prompt pass (gradient checkpointing?)")
        cache.batch_select_indices(of)  # each row reads its context's keys and values
        position = kwargs["position_ids"]
        steps = torch.arange(1, width, device=device)
        # a response continues from its context's last position (all three axes of multimodal
        # RoPE: response tokens are text)
        after = position[..., -1:][..., of, :] + steps  # [N, T-1] or [3, N, T-1]
        extra = {}
        if "mm_token_type_ids" in kwargs:
            extra["mm_token_type_ids"] = torch.zeros(len(context_of), width - 1, dtype=torch.long, device=device)
        resp_ids = input_ids[:, start : start + width - 1]
        resp_mask = torch.cat([ctx_mask[of], attention_mask[:, start : start + width - 1]], dim=1)
        rest = model(
            input_ids=resp_ids,
            attention_mask=resp_mask,
            position_ids=after,
            past_key_values=cache,
            use_cache=True,
            **extra,
        ).logits  # [N, T-1, V]
        logits = torch.cat([logits, rest], dim=1)
    if temperature != 1.0:
        logits = logits / temperature
    return logits

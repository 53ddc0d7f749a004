"""Per-token log-probabilities and entropies of sampled responses.

Sequences are packed as ``[prompt | response | pad]`` rows; ``logits[:, t]`` predicts
``input_ids[:, t + 1]``. Everything is computed in float32 whatever the model dtype, a chunk of
positions at a time (:data:`CHUNK_ELEMENTS`): a bfloat16 model's logits are never copied to
float32 as a whole, neither in the forward nor for the backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable

CHUNK_ELEMENTS = 1 << 24
"""Float32 elements (positions x vocabulary) a log-prob or entropy chunk holds: 64 MB, e.g. 110
positions of a 151,936-entry vocabulary; a small vocabulary is one chunk."""


def _chunks(positions: int, vocab: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for begin in range(0, positions, step):
        yield slice(begin, min(begin + step, positions))


class _TokenLogprobs(torch.autograd.Function):
    """``z[target] - logsumexp(z)`` per position of ``[P, V]`` logits, in float32 chunks; the
    backward recomputes each chunk's softmax from the logits and the saved ``[P]`` logsumexp."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for c in _chunks(*logits.shape):
            z = logits[c].float()
            lse[c] = torch.logsumexp(z, dim=-1)
            out[c] = z.gather(-1, targets[c, None])[:, 0] - lse[c]
        ctx.save_for_backward(logits, targets, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        out = torch.empty_like(logits)
        for c in _chunks(*logits.shape):
            g = grad[c, None]
            d = torch.exp(logits[c].float() - lse[c, None]).mul_(-g)  # -g * softmax
            out[c] = d.scatter_add_(-1, targets[c, None], g)
        return out, None


class _TokenEntropy(torch.autograd.Function):
    """``-sum softmax(z) log softmax(z)`` per position of ``[P, V]`` logits, in float32 chunks;
    ``dH/dz_j = -p_j (log p_j + H)``, recomputed chunk by chunk."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for c in _chunks(*logits.shape):
            logp = torch.log_softmax(logits[c].float(), dim=-1)
            out[c] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, entropy = ctx.saved_tensors
        out = torch.empty_like(logits)
        for c in _chunks(*logits.shape):
            logp = torch.log_softmax(logits[c].float(), dim=-1)
            out[c] = -(logp.exp() * (logp + entropy[c, None])) * grad[c, None]
        return (out,)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]``, in float32 chunks of positions (exact gradients).

    Args:
        logits: ``[..., V]`` next-token logits aligned with ``targets`` (any float dtype).
        targets: ``[...]`` token ids.

    Returns:
        ``[...]`` float32 log-probabilities.
    """
    flat = _TokenLogprobs.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return flat.view(targets.shape)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``[...]`` float32 entropy (nats) of the next-token distributions of ``[..., V]`` logits,
    in float32 chunks of positions (exact gradients)."""
    return _TokenEntropy.apply(logits.reshape(-1, logits.shape[-1])).view(logits.shape[:-1])


@contextmanager
def head_at(model: torch.nn.Module, select: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[bool]:
    """Within the block, the model's LM head (its output embeddings) runs on ``select(hidden)``
    only: the logits a forward returns are those of the selected positions, with whatever the
    model does to them after the head (scaling, soft-capping). Yields False, changing nothing,
    for a model without output embeddings (its caller selects from the full logits)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        yield False
        return
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("the LM head ran twice in one forward; cannot select its positions")
        return (select(args[0]), *args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield True
    finally:
        handle.remove()


def response_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float = 1.0,
    model_inputs: Callable[[torch.Tensor, torch.Tensor, int], dict] | None = None,
) -> torch.Tensor:
    """Logits that predict the response tokens ``input_ids[:, response_start:]``.

    The LM head runs on those positions only (:func:`head_at`), not on the prompt's.

    Args:
        model: a causal LM returning ``.logits``.
        input_ids: ``[N, L]`` left-padded prompts followed by right-padded responses.
        attention_mask: ``[N, L]``.
        response_start: column where responses begin (all prompts are left-padded to it).
        temperature: sampling temperature; logits are divided by it so log-probs match
            the distribution the engine sampled from.
        model_inputs: ``(input_ids, attention_mask, response_start) -> kwargs`` for models that
            need more than plain positions (images, multimodal rotary positions), called on the
            trimmed rows; None: ``position_ids = cumsum(mask) - 1``.

    Returns:
        ``[N, T, V]`` with ``T = L - response_start``.
    """
    # Drop the left-padding columns that every row shares (rows of one micro-batch may have
    # shorter prompts than the batch's longest, e.g. next to CIPO's long correction prompts).
    lead = int((attention_mask[:, : response_start - 1].sum(0) == 0).long().cumprod(0).sum())
    if lead:
        input_ids, attention_mask = input_ids[:, lead:], attention_mask[:, lead:]
        response_start -= lead
    if model_inputs is None:
        kwargs = {"position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)}
    else:
        kwargs = model_inputs(input_ids, attention_mask, response_start)
    response = slice(response_start - 1, input_ids.shape[1] - 1)
    with head_at(model, lambda hidden: hidden[:, response]) as selected:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    if not selected:
        logits = logits[:, response]  # [N, T, V]
    if temperature != 1.0:
        logits = logits / temperature
    return logits

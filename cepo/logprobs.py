"""Per-token log-probabilities and entropies of sampled responses.

Sequences are packed as ``[prompt | response | pad]`` rows; ``logits[:, t]`` predicts
``input_ids[:, t + 1]``. Everything is computed in float32 whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]`` without materialising the full log-softmax twice.

    Args:
        logits: ``[N, T, V]`` next-token logits aligned with ``targets``.
        targets: ``[N, T]`` token ids.

    Returns:
        ``[N, T]`` float32 log-probabilities.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # [N, T]
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` entropy of the next-token distribution (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def response_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float = 1.0,
    model_inputs: Callable[[torch.Tensor, torch.Tensor, int], dict] | None = None,
) -> torch.Tensor:
    """Logits that predict the response tokens ``input_ids[:, response_start:]``.

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
    out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    logits = out.logits[:, response_start - 1 : -1]  # [N, T, V]
    if temperature != 1.0:
        logits = logits / temperature
    return logits

"""A sampling loop that drops finished rows: the HF engine's fast path.

``model.generate`` keeps every row of the batch in every decoding step until the longest
response ends, so a few rollouts that run to ``max_new_tokens`` make the whole batch pay for
them. This loop removes a row from the batch (and from the KV cache) as soon as it emits EOS,
so decoding costs the tokens actually generated. Tokens are drawn exactly as ``generate``
draws them: the same logits processors in the same order (temperature, top-k, top-p), and the
reported log-probs are those of the processed distribution, as ``generate``'s scores.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cepo.rollout.engine import SamplingConfig


def warpers(sampling: SamplingConfig) -> LogitsProcessorList:
    """The processors ``generate`` applies for these settings, in its order."""
    out = LogitsProcessorList()
    if sampling.temperature not in (0, 1.0):
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        out.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p))
    return out


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: SamplingConfig,
    eos_id: int,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[list[float]] | None]:
    """Sample one response per row of left-padded prompts, dropping rows as they finish.

    Args:
        model: a causal LM taking ``input_ids``, ``attention_mask``, ``position_ids`` and
            ``past_key_values`` (every decoder-only transformers model).
        input_ids: ``[B, L]`` left-padded prompt ids.
        attention_mask: ``[B, L]``.
        sampling: temperature (0: greedy), top-k, top-p and ``max_new_tokens``.
        eos_id: the token that ends a response (kept as its last token).
        generator: random source of the draws.

    Returns:
        ``B`` responses (token ids, ending with EOS unless cut at ``max_new_tokens``) and their
        per-token log-probs under the processed distribution (None when greedy).
    """
    b = input_ids.shape[0]
    device = input_ids.device
    greedy = sampling.temperature == 0
    process = warpers(sampling)
    config = getattr(model, "config", None)
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    position = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position, past_key_values=cache, use_cache=True
    ).logits[:, -1]
    alive = torch.arange(b, device=device)  # original row of each row still decoding
    mask = attention_mask
    next_pos = position[:, -1] + 1
    tokens = torch.zeros(b, sampling.max_new_tokens, dtype=torch.long, device=device)
    logprobs = torch.zeros(b, sampling.max_new_tokens, device=device)
    lengths = torch.full((b,), sampling.max_new_tokens, dtype=torch.long, device=device)
    for t in range(sampling.max_new_tokens):
        scores = logits.float()
        if greedy:
            tok = scores.argmax(-1)
        else:
            scores = process(None, scores)
            tok = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(-1)
            logprobs[alive, t] = torch.log_softmax(scores, -1).gather(-1, tok[:, None]).squeeze(-1)
        tokens[alive, t] = tok
        done = tok == eos_id
        lengths[alive[done]] = t + 1
        if t == sampling.max_new_tokens - 1:
            break
        if bool(done.any()):
            keep = torch.nonzero(~done).flatten()
            if keep.numel() == 0:
                break
            alive, tok, next_pos, mask = alive[keep], tok[keep], next_pos[keep], mask[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        next_pos = next_pos + 1
    lengths = lengths.tolist()
    responses = [row[:n] for row, n in zip(tokens.tolist(), lengths)]
    if greedy:
        return responses, None
    return responses, [row[:n] for row, n in zip(logprobs.tolist(), lengths)]

"""A sampling loop that drops finished rows: the HF engine's fast path.

``model.generate`` keeps every row of the batch in every decoding step until the longest
response ends, so a few rollouts that run to ``max_new_tokens`` make the whole batch pay for
them. This loop removes a row from the batch (and from the KV cache) as soon as it emits EOS,
so decoding costs the tokens actually generated. Tokens are drawn exactly as ``generate``
draws them: the same logits processors in the same order (temperature, top-k, top-p), and the
reported log-probs are those of the processed distribution, as ``generate``'s scores.

The presence and repetition penalties follow vLLM (``vllm/model_executor/layers/utils.py``,
``apply_penalties``): they act on the raw logits before temperature, repetition first, over the
prompt's real tokens (left padding excluded) and the response so far. :class:`Penalties` is the
same computation as a ``generate`` logits processor, so both HF paths and vLLM agree.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessor,
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


def seen_tokens(ids: torch.Tensor, vocab_size: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, V]`` bool: which tokens occur in each row of ``ids`` (``[B, T]``).

    Positions where ``mask`` (``[B, T]``) is 0, and ids outside the vocabulary, are left out.
    """
    if mask is not None:
        ids = ids.masked_fill(mask == 0, vocab_size)
    out = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    out.scatter_(1, ids.clamp(min=0, max=vocab_size), True)  # column V absorbs the left-out ids
    return out[:, :vocab_size]


def penalize(
    scores: torch.Tensor,
    prompt_seen: torch.Tensor | None,
    output_seen: torch.Tensor,
    presence: float,
    repetition: float,
) -> torch.Tensor:
    """vLLM's repetition and presence penalties on raw logits (``apply_penalties``).

    Args:
        scores: ``[B, V]`` raw logits.
        prompt_seen: ``[B, V]`` bool, tokens of the prompt (ignored when ``repetition`` is 1).
        output_seen: ``[B, V]`` bool, tokens of the response so far.
        presence: subtracted once from every logit of ``output_seen``.
        repetition: logits of ``prompt_seen | output_seen`` are divided by it when > 0 and
            multiplied by it otherwise (as vLLM: multiplied by ``1 / repetition``).

    Returns:
        ``[B, V]`` penalized logits (a new tensor).
    """
    if repetition != 1:
        seen = output_seen if prompt_seen is None else output_seen | prompt_seen
        penalty = torch.tensor(repetition, dtype=scores.dtype, device=scores.device)
        scale = torch.where(scores > 0, 1.0 / penalty, penalty)
        scores = torch.where(seen, scores * scale, scores)
    if presence:
        scores = scores - presence * output_seen.to(scores.dtype)
    return scores


class Penalties(LogitsProcessor):
    """The penalties of :func:`penalize` as a ``generate`` logits processor.

    ``generate`` passes the whole sequence (prompt, then response); the first ``L`` columns
    are the prompt, and ``prompt_mask`` tells its real tokens from the left padding, which
    vLLM never sees (transformers' ``RepetitionPenaltyLogitsProcessor`` would penalize the
    pad token of padded rows, and that is EOS for models whose pad is EOS). It keeps the
    prompts' tokens after its first call: use one instance per ``generate`` call.

    Args:
        sampling: the settings that give ``presence_penalty`` and ``repetition_penalty``.
        prompt_mask: ``[B, L]`` attention mask of the prompts, one row per generated sequence
            (expanded like ``num_return_sequences`` expands the prompts).
    """

    def __init__(self, sampling: SamplingConfig, prompt_mask: torch.Tensor) -> None:
        self.presence = sampling.presence_penalty
        self.repetition = sampling.repetition_penalty
        self.prompt_mask = prompt_mask
        self._prompt_seen: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width, vocab = self.prompt_mask.shape[1], scores.shape[-1]
        if self.repetition != 1 and self._prompt_seen is None:  # the prompts do not change
            mask = self.prompt_mask.to(input_ids.device)
            self._prompt_seen = seen_tokens(input_ids[:, :width], vocab, mask)
        output_seen = seen_tokens(input_ids[:, width:], vocab)
        return penalize(scores, self._prompt_seen, output_seen, self.presence, self.repetition)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: SamplingConfig,
    eos_id: int,
    generator: torch.Generator | None = None,
    prefill: dict | None = None,
    banned: list[int] | None = None,
) -> tuple[list[list[int]], list[list[float]] | None]:
    """Sample one response per row of left-padded prompts, dropping rows as they finish.

    Args:
        model: a causal LM taking ``input_ids``, ``attention_mask``, ``position_ids`` and
            ``past_key_values`` (every decoder-only transformers model).
        input_ids: ``[B, L]`` left-padded prompt ids.
        attention_mask: ``[B, L]``.
        sampling: temperature (0: greedy), top-k, top-p, the penalties and ``max_new_tokens``.
        eos_id: the token that ends a response (kept as its last token).
        generator: random source of the draws.
        prefill: extra inputs of the prompt's forward pass (a vision-language model's images and
            its 3-D rotary ``position_ids``, ``cepo.vision.Vision.model_inputs``). With 3-D
            positions, each row continues from its last prompt position + 1 (text tokens use the
            same position on all three axes).
        banned: token ids never sampled (the vision tokens of a VL model).

    Returns:
        ``B`` responses (token ids, ending with EOS unless cut at ``max_new_tokens``) and their
        per-token log-probs under the processed distribution, penalties included (None when
        greedy).
    """
    b = input_ids.shape[0]
    device = input_ids.device
    greedy = sampling.temperature == 0
    process = warpers(sampling)
    config = getattr(model, "config", None)
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    inputs = dict(prefill or {})
    position = inputs.pop("position_ids", None)
    if position is None:
        position = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position,
        past_key_values=cache,
        use_cache=True,
        **inputs,
    ).logits[:, -1]
    if position.dim() == 3:  # multimodal RoPE: [3, B, L]; the last prompt token is text
        position = position[0]
    vocab = logits.shape[-1]
    penalized = sampling.penalized
    if penalized:  # per original row, indexed by `alive` as rows leave
        prompt_seen = seen_tokens(input_ids, vocab, attention_mask) if sampling.repetition_penalty != 1 else None
        output_seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
    alive = torch.arange(b, device=device)  # original row of each row still decoding
    mask = attention_mask
    next_pos = position[:, -1] + 1
    tokens = torch.zeros(b, sampling.max_new_tokens, dtype=torch.long, device=device)
    logprobs = torch.zeros(b, sampling.max_new_tokens, device=device)
    lengths = torch.full((b,), sampling.max_new_tokens, dtype=torch.long, device=device)
    for t in range(sampling.max_new_tokens):
        scores = logits.float()
        if banned:
            scores[:, banned] = float("-inf")
        if penalized:
            scores = penalize(
                scores,
                None if prompt_seen is None else prompt_seen[alive],
                output_seen[alive],
                sampling.presence_penalty,
                sampling.repetition_penalty,
            )
        if greedy:
            tok = scores.argmax(-1)
        else:
            scores = process(None, scores)
            tok = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(-1)
            logprobs[alive, t] = torch.log_softmax(scores, -1).gather(-1, tok[:, None]).squeeze(-1)
        tokens[alive, t] = tok
        if penalized:
            output_seen[alive, tok] = True
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

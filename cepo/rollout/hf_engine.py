"""Rollouts on the live policy with transformers (no copy, no weight transfer)."""

from __future__ import annotations

import torch

from cepo import distributed
from cepo.rollout.decode import Penalties, sample
from cepo.rollout.engine import Generation, PromptImages, RolloutEngine, SamplingConfig


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, L]`` ids, ``[B, L]`` mask) with every row right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


class HFEngine(RolloutEngine):
    """Generate with ``model.generate`` on the trainer's own policy.

    The engine shares the policy's parameters, so a weight sync only records the version.

    Args:
        batch_size: prompts per ``generate`` call (bounds memory; 0 = all at once).
        compact: decode with :func:`cepo.rollout.decode.sample`, which drops rows from the
            batch as they finish (same draws as ``generate``, fewer tokens computed); False,
            or stop strings in the sampling settings, use ``model.generate``.
    """

    def __init__(self, batch_size: int = 0, compact: bool = True) -> None:
        self.batch_size = batch_size
        self.compact = compact
        self.policy: torch.nn.Module | None = None
        self.tokenizer = None
        self._calls = 0

    def setup(self, policy: torch.nn.Module, tokenizer, model_path: str) -> None:
        self.policy, self.tokenizer = policy, tokenizer

    def sync_weights(self, policy: torch.nn.Module, version: int) -> None:
        if policy is not self.policy:
            raise RuntimeError("HFEngine generates with the trainer's policy object; rebind it")
        self.weight_version = version

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig, images: PromptImages | None = None
    ) -> Generation:
        assert self.policy is not None, "HFEngine.setup was not called"
        with distributed.gathered(self.policy):  # FSDP: sample on whole weights, without collectives
            return self._generate(prompt_ids, n, sampling, images)

    @torch.no_grad()
    def _generate(self, prompt_ids, n: int, sampling: SamplingConfig, images: PromptImages | None) -> Generation:
        if images is not None and (not self.compact or sampling.stop):
            raise ValueError("HFEngine samples images with its own loop: compact must be true and no stop strings")
        policy, tok = self.policy, self.tokenizer
        was_training = policy.training
        policy.eval()
        greedy = sampling.temperature == 0
        kwargs = dict(
            do_sample=not greedy,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            output_scores=True,
            # the penalties are cepo's own processor (vLLM's meaning); 1.0 also keeps a
            # `repetition_penalty` from the model's generation_config from applying here alone
            repetition_penalty=1.0,
        )
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=tok)
        device = next(policy.parameters()).device
        step = self.batch_size or len(prompt_ids)
        responses: list[list[int]] = []
        logprobs: list[list[float]] = []
        for start in range(0, len(prompt_ids), step):
            chunk = prompt_ids[start : start + step]
            ids, mask = left_pad(chunk, tok.pad_token_id)
            if self.compact and not sampling.stop:
                gen = torch.Generator(device=device).manual_seed(sampling.seed + self._calls)
                self._calls += 1
                ids, mask = ids.repeat_interleave(n, 0).to(device), mask.repeat_interleave(n, 0).to(device)
                prefill, banned = None, None
                if images is not None:  # a VL policy: each row's images, multimodal positions
                    rows_images = [images.images[start + i // n] for i in range(ids.shape[0])]
                    if any(im is not None for im in rows_images):
                        prefill = images.vision.model_inputs(policy, ids, mask, ids.shape[1], rows_images)
                    banned = images.vision.banned
                rows, lps = sample(policy, ids, mask, sampling, tok.eos_token_id, gen, prefill, banned)
                responses += rows
                logprobs += lps or []
                continue
            processors = [Penalties(sampling, mask.repeat_interleave(n, 0))] if sampling.penalized else []
            # transformers samples from the global RNG: seed it per call so runs repeat, inside a
            # fork so the rest of the run (data order, ...) keeps its own stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sampling.seed + self._calls)
                out = policy.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), logits_processor=processors, **kwargs
                )
            self._calls += 1
            new = out.sequences[:, ids.shape[1] :].cpu()  # [B*n, T]
            scores = torch.stack(out.scores, dim=1).float().cpu()  # [B*n, T, V] processed logits, penalties included
            lp = torch.log_softmax(scores, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row, row_lp in zip(new.tolist(), lp.tolist()):
                length = _response_length(row, tok.eos_token_id, tok.pad_token_id)
                responses.append(row[:length])
                logprobs.append(row_lp[:length])
        policy.train(was_training)
        return Generation(responses, None if greedy else logprobs, self.weight_version)


def _response_length(row: list[int], eos_id: int, pad_id: int) -> int:
    """Tokens up to and including the first EOS; without EOS, up to the trailing pad."""
    if eos_id in row:
        return row.index(eos_id) + 1
    length = len(row)
    while length and row[length - 1] == pad_id:
        length -= 1
    return length

"""The rollout batch: what the DataModule hands to the training step.

Rows are group-major: the ``G`` rollouts of prompt ``p`` are rows ``p*G .. p*G+G-1``.
Sequences are packed ``[left-padded prompt | right-padded response]`` so that every
response starts at column ``response_start``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RolloutBatch:
    """One step's rollouts, verified and packed.

    Attributes:
        input_ids: ``[N, L]`` prompt + response token ids.
        attention_mask: ``[N, L]``.
        response_start: column of the first response token.
        response_mask: ``[N, T]`` bool, ``T = L - response_start``.
        rewards: ``[N]`` float.
        correct: ``[N]`` bool, reward at or above the success threshold.
        engine_logprobs: ``[N, T]`` the engine's log-probs of the sampled tokens (0 off the
            mask), or None (greedy evaluation).
        group_size: ``G``.
        prompts: ``P`` prompt strings.
        answers: ``P`` reference answers.
        solutions: ``P`` reference solutions (may be empty strings).
        responses: ``N`` decoded responses.
        extracted: ``N`` answers extracted from the responses (None when absent).
        prompt_ids: ``P`` prompt token-id lists.
        response_ids: ``N`` response token-id lists.
        weight_version: the policy version the engine generated with.
        timings: seconds per stage so far (``generate``, ``score``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_start: int
    response_mask: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor
    engine_logprobs: torch.Tensor | None
    group_size: int
    prompts: list[str]
    answers: list[str]
    solutions: list[str]
    responses: list[str]
    extracted: list[str | None]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    weight_version: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_rollouts(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """The tensors a forward pass needs, for a subset of rows."""
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "response_mask": self.response_mask[index],
        }


def pack(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Pack ``[prompt | response]`` rows; prompts are left-padded, responses right-padded.

    Args:
        prompt_ids: ``N`` prompt id lists (one per row, repeat a prompt per rollout).
        response_ids: ``N`` response id lists.
        pad_id: padding token id.

    Returns:
        ``input_ids [N, L]``, ``attention_mask [N, L]``, ``response_start``, ``response_mask [N, T]``.
    """
    n = len(prompt_ids)
    lp = max(len(p) for p in prompt_ids)
    t = max(1, max(len(r) for r in response_ids))
    input_ids = torch.full((n, lp + t), pad_id, dtype=torch.long)
    attention = torch.zeros((n, lp + t), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, lp - len(p) : lp] = torch.tensor(p, dtype=torch.long)
        attention[i, lp - len(p) : lp] = 1
        if r:
            input_ids[i, lp : lp + len(r)] = torch.tensor(r, dtype=torch.long)
            attention[i, lp : lp + len(r)] = 1
    response_mask = attention[:, lp:].bool()
    return input_ids, attention, lp, response_mask


def pad_right(rows: list[list[float]], width: int) -> torch.Tensor:
    """``[N, width]`` float tensor, rows right-padded with 0."""
    out = torch.zeros((len(rows), width), dtype=torch.float)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.float)
    return out

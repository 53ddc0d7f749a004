"""CIPO: correction-oriented policy optimization (docs/algorithms.md §5, the second seed paper).

Failed rollouts become correction prompts: the original prompt, the model's own failed
attempt, an instruction to find and fix the error. The policy samples corrections on-policy
(same engine, same weights, same verifier), and the corrections join the batch as extra
groups, trained by the same clipped surrogate and credit rule with their advantages scaled by
``weight``.

Choices the paper leaves open, made here (each a constructor argument):

- **Which failures.** At most one failed rollout per prompt: the lowest-reward one (ties: the
  first). Prompts are taken hardest first (fewest successes), then in batch order.
- **How many corrections.** ``group_size`` per failed attempt, so each attempt is a GRPO group
  of its own and advantages compare corrections of the same attempt.
- **Share cap.** Correction rows are at most ``max_share`` of the combined batch.
- **Template.** ``cepo.prompts.templates.CIPO_TEMPLATE``, which restates the problem at the end so the model
  answers in the task's own format. The reference answer never enters the prompt.
- **Weight.** The corrections' advantages are multiplied by ``weight`` (0.5 by default).
"""

from __future__ import annotations

import math

import torch

from cepo.objectives.base import Objective, check_weight
from cepo.prompts.templates import CIPO_INSTRUCTION, CIPO_TEMPLATE, check
from cepo.rollout.batch import RolloutBatch, concat


def choose_failures(correct: torch.Tensor, rewards: torch.Tensor, group_size: int, limit: int) -> list[int]:
    """Rows of at most ``limit`` failed rollouts, one per prompt, hardest prompts first.

    Args:
        correct: ``[N]`` bool.
        rewards: ``[N]`` float.
        group_size: ``G``.
        limit: the most rows returned.

    Returns:
        Row indices, each a failed rollout (the lowest-reward one of its group; ties: first).
    """
    g = group_size
    groups = []
    for p in range(correct.numel() // g):
        failed = [p * g + j for j in range(g) if not bool(correct[p * g + j])]
        if failed:
            wins = g - len(failed)
            groups.append((wins, p, min(failed, key=lambda r: (float(rewards[r]), r))))
    groups.sort()
    return [row for _, _, row in groups[: max(limit, 0)]]


class CIPO(Objective):
    """Corrections of the policy's own failed attempts, optimized jointly with GRPO.

    Args:
        weight: multiplies the correction rows' advantages in the surrogate.
        max_share: the largest fraction of the combined batch's rows that are corrections
            (in (0, 1)).
        template: correction prompt with ``{prompt}`` and ``{attempt}``, under a plain prompt format.
        instruction: under a chat prompt format, the user turn that follows the failed attempt
            (itself the assistant's turn).
    """

    name = "cipo"

    def __init__(
        self,
        weight: float = 0.5,
        max_share: float = 0.25,
        template: str = CIPO_TEMPLATE,
        instruction: str = CIPO_INSTRUCTION,
    ) -> None:
        super().__init__()
        check_weight("cipo.weight", weight)
        if not 0 < max_share < 1:
            raise ValueError(f"cipo.max_share must be in (0, 1), got {max_share}")
        self.weight = weight
        self.max_share = max_share
        self.template = check(template, "cipo.template", ("prompt", "attempt"))
        self.instruction = instruction
        self.pg_weight = 1.0
        self.last_prompts: list[str] = []

    def correction_prompts(self, batch: RolloutBatch, tokenizer) -> tuple[list[int], list[list[dict[str, str]]]]:
        """The chosen failed rows and their correction conversations."""
        prompts_now = batch.num_rollouts // batch.group_size
        limit = math.floor(self.max_share / (1.0 - self.max_share) * prompts_now + 1e-9)
        rows = choose_failures(batch.correct, batch.rewards, batch.group_size, limit)
        src, conversations = batch.provenance, []
        for row in rows:
            attempt = tokenizer.decode(src.response_ids[row], skip_special_tokens=True)
            group = src.conversation(row // batch.group_size)
            conversations.append(src.format.correction(group, attempt, self.template, self.instruction))
        return rows, conversations

    def build_samples(self, batch: RolloutBatch) -> RolloutBatch:
        tokenizer = self.policy.tokenizer
        rows, conversations = self.correction_prompts(batch, tokenizer)
        src = batch.provenance
        texts = [src.format.render(c, tokenizer) for c in conversations]
        self.last_prompts = texts
        self._metrics = {"attempts": float(len(rows))}
        if not rows:
            return batch
        g = batch.group_size
        groups = [row // g for row in rows]
        images = None if src.images is None else [src.images[p] for p in groups]
        extra = self.sampler.sample(
            self.sampler.encode(texts, images),
            texts,
            [src.answers[p] for p in groups],
            [src.solutions[p] for p in groups],
            g,
            messages=conversations,
            images=images,
        )
        self._metrics["success_rate"] = float(extra.correct.float().mean())
        self._metrics["attempt_solved"] = float(extra.correct.view(-1, g).any(-1).float().mean())
        return concat(batch, extra, tokenizer.pad_token_id, b_weight=self.weight)

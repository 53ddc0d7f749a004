"""Teacher contexts: what the answer-conditioned teachers see before the sampled response.

For each rollout ``y`` of prompt ``x`` the correct teacher sees ``x`` with feedback ``c+`` (by
default the verified answer) and the wrong teacher sees ``c-`` (by default the answer of the
lowest-reward rejected rollout of the same group that has an extractable answer different from
``c+``). Both read back log-probs at the response positions only, under ``torch.no_grad()``
(docs/algorithms.md §3, "Teacher contexts"). Which weights run the pass is a separate strategy
(:mod:`cepo.teacher.weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cepo.policy import PolicyRef
from cepo.prompts.templates import HINT_TEMPLATE, RAW_TEMPLATE, check
from cepo.rollout.batch import RolloutBatch, pack
from cepo.scoring import Packed, Scorer
from cepo.teacher.weights import TeacherWeights
from cepo.vision import PLACEHOLDER, Images

Feedback = Literal["answer", "answer_rollout", "rollout", "first_k", "last_k"]


@dataclass
class GroupFeedback:
    """The feedback texts chosen for one group (``neg`` None: no usable wrong answer)."""

    pos: str
    neg: str | None


@dataclass
class TeacherScores:
    """Teacher log-probs of the sampled tokens, ``[N, T]`` (0 off the scored rows and the mask).

    Attributes:
        pos: ``log P_T+(y_t)``, or None when not asked for.
        neg: ``log P_T-(y_t)`` on the rows in ``has_negative``, or None when not asked for.
        has_negative: ``[N]`` bool, rows whose group has a usable wrong answer (None with ``neg``).
        contexts: ``{group: (c+ prompt, c- prompt or None)}``, the full teacher prompts scored.
    """

    pos: torch.Tensor | None = None
    neg: torch.Tensor | None = None
    has_negative: torch.Tensor | None = None
    contexts: dict[int, tuple[str | None, str | None]] | None = None


def pack_contexts(
    contexts: list[list[int]], responses: list[list[int]], pad_id: int, temperature: float, device
) -> Packed:
    """Each response after its context, packed for :class:`~cepo.scoring.Scorer`."""
    ids, attn, start, mask = pack(contexts, responses, pad_id)
    return Packed(ids.to(device), attn.to(device), start, mask.to(device), temperature)


def choose_negative(rewards: list[float], correct: list[bool], extracted: list[str | None], answer: str) -> int | None:
    """Index of the lowest-reward rejected rollout whose extracted answer exists and differs
    from ``answer`` (ties: the first), or None.

    Rollouts without an extractable answer are skipped: the authors' extractor turned them
    into the string "None" and the wrong teacher then saw " None" (docs/algorithms.md §3).
    """
    candidates = [
        i
        for i, (ok, got) in enumerate(zip(correct, extracted))
        if not ok and got is not None and got.strip() and got.strip() != answer.strip()
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (rewards[i], i))


class TeacherContexts:
    """Builds the ``c+``/``c-`` contexts of a rollout batch and scores the responses under them.

    Args:
        template: ``raw`` (the feedback right after the prompt, at the start of the assistant
            turn: the paper's code) or ``hint`` (RLSD's instruction, put in the user turn, the
            chat template rendered again).
        feedback: what ``c+``/``c-`` carry (paper Table 5): ``answer`` (verified answer /
            peer wrong answer, default), ``answer_rollout`` (verified answer / full rejected
            rollout), ``rollout`` (full best-correct / full worst-rejected rollout),
            ``first_k`` / ``last_k`` (the first / last ``k`` tokens of each rollout). Where a
            group has no correct rollout, rollout-based ``c+`` falls back to the reference
            solution, else to the verified answer.
        k: tokens kept by ``first_k``/``last_k``.
        raw_template: the ``raw`` template (fields ``{prompt}``, ``{feedback}``).
        hint_template: the ``hint`` template.
        images: teachers of a vision-language policy see the prompt's images (default). False
            drops them from the teacher contexts (image-blind teachers, as the CEPO authors' code
            does for both CEPO teachers).
    """

    def __init__(
        self,
        template: Literal["raw", "hint"] = "raw",
        feedback: Feedback = "answer",
        k: int = 512,
        raw_template: str = RAW_TEMPLATE,
        hint_template: str = HINT_TEMPLATE,
        images: bool = True,
    ) -> None:
        if k < 1:
            raise ValueError(f"teacher.k must be >= 1, got {k}")
        check(raw_template, "teacher.raw_template")
        check(hint_template, "teacher.hint_template")
        self.template = template
        self.feedback = feedback
        self.k = k
        self.format = raw_template if template == "raw" else hint_template
        self.images = images
        self.policy: PolicyRef | None = None
        self.tokenizer = None
        self.last_contexts: list[tuple[str, str | None]] = []

    def setup(self, policy: PolicyRef) -> None:
        """Bind to the policy (its tokenizer, and its image handling for a VL policy)."""
        self.policy, self.tokenizer = policy, policy.tokenizer

    # -- contexts ----------------------------------------------------------------------
    def group_feedback(self, batch: RolloutBatch, group: int) -> GroupFeedback:
        """``c+``/``c-`` texts for prompt ``group`` of ``batch``."""
        g = batch.group_size
        rows = range(group * g, (group + 1) * g)
        rewards = [float(batch.rewards[i]) for i in rows]
        correct = [bool(batch.correct[i]) for i in rows]
        extracted = [batch.provenance.extracted[i] for i in rows]
        answer = batch.provenance.answers[group]
        neg_i = choose_negative(rewards, correct, extracted, answer)
        if self.feedback == "answer":
            return GroupFeedback(answer, None if neg_i is None else extracted[neg_i].strip())
        neg_text = None if neg_i is None else self._rollout_text(batch, group * g + neg_i)
        if self.feedback == "answer_rollout":
            return GroupFeedback(answer, neg_text)
        best = [i for i in range(g) if correct[i]]
        if best:
            pos_text = self._rollout_text(batch, group * g + max(best, key=lambda i: (rewards[i], -i)))
        else:
            pos_text = batch.provenance.solutions[group] or answer
        return GroupFeedback(pos_text, neg_text)

    def _rollout_text(self, batch: RolloutBatch, row: int) -> str:
        eos = self.tokenizer.eos_token_id  # a lookup on every read
        ids = [t for t in batch.provenance.response_ids[row] if t != eos]
        if self.feedback in ("first_k", "last_k"):
            ids = ids[: self.k] if self.feedback == "first_k" else ids[-self.k :]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def context_text(self, batch: RolloutBatch, group: int, feedback: str) -> str:
        """The teacher's prompt for ``group`` with ``feedback``: ``raw`` splices it at the start of
        the assistant turn, ``hint`` puts the instruction in the user turn and re-renders."""
        placement = "assistant" if self.template == "raw" else "user"
        src = batch.provenance
        text = src.format.with_feedback(
            src.conversation(group), self.format, placement, self.tokenizer, feedback=feedback
        )
        return text if self.images else text.replace(PLACEHOLDER, "")

    def context_images(self, batch: RolloutBatch, group: int) -> Images | None:
        """The images the teacher of prompt ``group`` sees (None: none)."""
        return batch.provenance.image(group) if self.images else None

    def context_ids(self, batch: RolloutBatch, group: int, feedback: str) -> list[int]:
        """Token ids of :meth:`context_text` (images expanded as in the policy's prompt)."""
        return self.policy.encode(self.context_text(batch, group, feedback), self.context_images(batch, group))

    # -- scoring -----------------------------------------------------------------------
    @torch.no_grad()
    def score(
        self,
        batch: RolloutBatch,
        rows: torch.Tensor,
        pos: bool,
        neg: bool,
        weights: TeacherWeights,
        scorer: Scorer,
    ) -> TeacherScores:
        """Teacher log-probs of the responses of ``rows`` under ``c+`` and/or ``c-``.

        Both teachers' rows go through one planned set of forward passes.

        Args:
            batch: the rollout batch.
            rows: ``[n]`` rollout indices to score; the others stay 0.
            pos: score under ``c+``.
            neg: score under ``c-`` (rows whose group has no usable wrong answer are not scored
                and are False in ``has_negative``).
            weights: the teacher weights to run.
            scorer: the micro-batched scoring loop.
        """
        g, n = batch.group_size, batch.num_rollouts
        feedback = [self.group_feedback(batch, p) for p in range(n // g)]
        self.last_contexts = [(f.pos, f.neg) for f in feedback]
        contexts: list[list[int]] = []
        responses: list[list[int]] = []
        pos_of: list[int] = []  # rollouts scored under c+ ...
        pos_at: list[int] = []  # ... and the score row of that context
        neg_of: list[int] = []
        neg_at: list[int] = []
        cached: dict[tuple[int, str], list[int]] = {}  # the G rollouts of a group share its contexts
        texts: dict[tuple[int, str], str] = {}
        images: list[Images | None] = []  # per context row

        def ids(group: int, feedback_text: str) -> list[int]:
            key = (group, feedback_text)
            if key not in cached:
                texts[key] = self.context_text(batch, group, feedback_text)
                cached[key] = self.policy.encode(texts[key], self.context_images(batch, group))
            return cached[key]

        for i in rows.tolist():
            fb = feedback[i // g]
            if pos:
                pos_of.append(i)
                pos_at.append(len(contexts))
                contexts.append(ids(i // g, fb.pos))
                responses.append(batch.provenance.response_ids[i])
                images.append(self.context_images(batch, i // g))
            if neg and fb.neg is not None:
                neg_of.append(i)
                neg_at.append(len(contexts))
                contexts.append(ids(i // g, fb.neg))
                responses.append(batch.provenance.response_ids[i])
                images.append(self.context_images(batch, i // g))
        device = batch.response_mask.device
        width = batch.response_mask.shape[1]
        scores = None
        if contexts:
            packed = pack_contexts(contexts, responses, self.tokenizer.pad_token_id, batch.temperature, device)
            packed.images, packed.vision = images, self.policy.vision
            with weights.model() as model:
                scores, _ = scorer.logprobs(model, packed)
            # the scored rows' longest response can be shorter than the batch's
            scores = torch.nn.functional.pad(scores[:, :width], (0, width - min(scores.shape[1], width)))
        out = TeacherScores()
        out.contexts = {
            group: (texts.get((group, fb.pos)), texts.get((group, fb.neg)) if fb.neg is not None else None)
            for group, fb in enumerate(feedback)
            if (group, fb.pos) in texts or (group, fb.neg) in texts
        }
        if pos:
            out.pos = torch.zeros(batch.response_mask.shape, device=device)
            if pos_of:
                out.pos[pos_of] = scores[pos_at]
        if neg:
            out.neg = torch.zeros(batch.response_mask.shape, device=device)
            out.has_negative = torch.zeros(n, dtype=torch.bool, device=device)
            if neg_of:
                out.neg[neg_of] = scores[neg_at]
                out.has_negative[neg_of] = True
        return out

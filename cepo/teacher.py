"""Teacher passes: log-probs of the sampled response under answer-conditioned contexts.

For each rollout ``y`` of prompt ``x`` the correct teacher sees ``x`` followed by feedback
``c+`` (by default the verified answer) and the wrong teacher sees ``c-`` (by default the
answer of the lowest-reward rejected rollout of the same group that has an extractable
answer different from ``c+``). Both read back log-probs at the response positions only,
under ``torch.no_grad()``, packed into as few forward passes as ``micro_batch_size`` allows
(ALGORITHMS.md §3, "Teacher context").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from cepo import microbatch
from cepo.credit.base import CreditAssigner, CreditInputs
from cepo.logprobs import response_logits, token_logprobs
from cepo.rollout.batch import RolloutBatch, pack

RAW_TEMPLATE = "{prompt} {feedback}"
"""The paper's code: the feedback spliced right after the prompt, as if it began the answer."""
HINT_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution:\n{feedback}\n\n"
    "After understanding the reference solution, please try to solve this problem using "
    "your own approach below.\n"
)
"""RLSD's instruction template."""

Feedback = Literal["answer", "answer_rollout", "rollout", "first_k", "last_k"]


@dataclass
class GroupFeedback:
    """The feedback texts chosen for one group (``neg`` None: no usable wrong answer)."""

    pos: str
    neg: str | None


def choose_negative(rewards: list[float], correct: list[bool], extracted: list[str | None], answer: str) -> int | None:
    """Index of the lowest-reward rejected rollout whose extracted answer exists and differs
    from ``answer`` (ties: the first), or None.

    Rollouts without an extractable answer are skipped: the authors' extractor turned them
    into the string "None" and the wrong teacher then saw " None" (ALGORITHMS.md §3).
    """
    candidates = [
        i
        for i, (ok, got) in enumerate(zip(correct, extracted))
        if not ok and got is not None and got.strip() and got.strip() != answer.strip()
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (rewards[i], i))


def _truncate(ids: list[int], k: int, first: bool) -> list[int]:
    return ids[:k] if first else ids[-k:]


class TeacherPass:
    """Builds teacher contexts for a rollout batch and scores the sampled responses under them.

    Args:
        template: ``raw`` (``"{prompt} {feedback}"``, the paper's code) or ``hint`` (RLSD's
            instruction template).
        feedback: what ``c+``/``c-`` carry (paper Table 5): ``answer`` (verified answer /
            peer wrong answer, default), ``answer_rollout`` (verified answer / full rejected
            rollout), ``rollout`` (full best-correct / full worst-rejected rollout),
            ``first_k`` / ``last_k`` (the first / last ``k`` tokens of each rollout). Where a
            group has no correct rollout, rollout-based ``c+`` falls back to the reference
            solution, else to the verified answer.
        k: tokens kept by ``first_k``/``last_k``.
        weights: teacher weights (paper Table 4): ``live`` (the current actor, default),
            ``base`` (the initial policy: LoRA adapter disabled, or a frozen copy),
            ``synced`` (a copy refreshed every ``sync_every`` steps), ``ema`` (a copy updated
            as ``theta_T <- (1-tau) theta_T + tau theta_S`` every step).
        sync_every: refresh period of ``synced`` weights, in rollout steps.
        ema_tau: EMA rate of ``ema`` weights.
        micro_batch_size: rows per teacher forward, grouped by length and trimmed to the
            longest (``cepo.microbatch``; 0: both teachers in one pass).
        raw_template: the ``raw`` format string (``{prompt}``, ``{feedback}``).
        hint_template: the ``hint`` format string.
    """

    def __init__(
        self,
        template: Literal["raw", "hint"] = "raw",
        feedback: Feedback = "answer",
        k: int = 512,
        weights: Literal["live", "base", "synced", "ema"] = "live",
        sync_every: int = 25,
        ema_tau: float = 0.05,
        micro_batch_size: int = 64,
        raw_template: str = RAW_TEMPLATE,
        hint_template: str = HINT_TEMPLATE,
    ) -> None:
        if k < 1:
            raise ValueError(f"teacher.k must be >= 1, got {k}")
        if sync_every < 1:
            raise ValueError(f"teacher.sync_every must be >= 1, got {sync_every}")
        if not 0 < ema_tau <= 1:
            raise ValueError(f"teacher.ema_tau must be in (0, 1], got {ema_tau}")
        for name, tmpl in (("raw_template", raw_template), ("hint_template", hint_template)):
            if "{prompt}" not in tmpl or "{feedback}" not in tmpl:
                raise ValueError(f"teacher.{name} must contain {{prompt}} and {{feedback}}")
        self.template = template
        self.feedback = feedback
        self.k = k
        self.weights = weights
        self.sync_every = sync_every
        self.ema_tau = ema_tau
        self.micro_batch_size = micro_batch_size
        self.format = raw_template if template == "raw" else hint_template
        self.policy: torch.nn.Module | None = None
        self.tokenizer = None
        self.copy: torch.nn.Module | None = None
        self.last_contexts: list[tuple[str, str | None]] = []

    # -- weights -----------------------------------------------------------------------
    @staticmethod
    def frozen_copy(policy: torch.nn.Module) -> torch.nn.Module:
        """A no-grad deep copy in eval mode."""
        twin = copy.deepcopy(policy).eval()
        for p in twin.parameters():
            p.requires_grad_(False)
        return twin

    def setup(self, policy: torch.nn.Module, tokenizer) -> None:
        """Bind to the policy; make the weight copy that ``base``/``synced``/``ema`` need."""
        self.policy, self.tokenizer = policy, tokenizer
        from cepo.policy import is_peft

        if self.weights in ("synced", "ema") or (self.weights == "base" and not is_peft(policy)):
            self.copy = self.frozen_copy(policy)

    @torch.no_grad()
    def on_step_end(self, rl_step: int) -> None:
        """Advance ``synced``/``ema`` weights after rollout step ``rl_step`` (1-based)."""
        if self.weights == "synced" and rl_step % self.sync_every == 0:
            self.copy.load_state_dict(self.policy.state_dict())
        elif self.weights == "ema":
            for t, s in zip(self.copy.parameters(), self.policy.parameters()):
                t.lerp_(s.detach(), self.ema_tau)

    def state_dict(self) -> dict:
        return {} if self.copy is None else {"copy": self.copy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.copy is not None and "copy" in state:
            self.copy.load_state_dict(state["copy"])

    # -- contexts ----------------------------------------------------------------------
    def group_feedback(self, batch: RolloutBatch, group: int) -> GroupFeedback:
        """``c+``/``c-`` texts for prompt ``group`` of ``batch``."""
        g = batch.group_size
        rows = range(group * g, (group + 1) * g)
        rewards = [float(batch.rewards[i]) for i in rows]
        correct = [bool(batch.correct[i]) for i in rows]
        extracted = [batch.extracted[i] for i in rows]
        answer = batch.answers[group]
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
            pos_text = batch.solutions[group] or answer
        return GroupFeedback(pos_text, neg_text)

    def _rollout_text(self, batch: RolloutBatch, row: int) -> str:
        ids = [t for t in batch.response_ids[row] if t != self.tokenizer.eos_token_id]
        if self.feedback in ("first_k", "last_k"):
            ids = _truncate(ids, self.k, self.feedback == "first_k")
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def context_ids(self, prompt: str, feedback: str, template: str | None = None) -> list[int]:
        """Token ids of ``template`` (default: this pass's) filled with ``prompt``/``feedback``."""
        text = (template or self.format).format(prompt=prompt, feedback=feedback)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # -- scoring -----------------------------------------------------------------------
    @torch.no_grad()
    def score(self, contexts: list[list[int]], responses: list[list[int]], temperature: float = 1.0) -> torch.Tensor:
        """``[M, T]`` log-probs of each response after its context (0 past its end)."""
        ids, attn, start, mask = self._pack(contexts, responses)
        out = torch.zeros(mask.shape, device=mask.device)
        with self._weights_context():
            for rows, w in self._plan(attn, start, mask):
                logits = response_logits(
                    self._model(), ids[rows, : start + w], attn[rows, : start + w], start, temperature
                )
                out[rows, :w] = token_logprobs(logits, ids[rows, start : start + w])
        return torch.where(mask, out, torch.zeros_like(out))

    @torch.no_grad()
    def logits(self, contexts: list[list[int]], responses: list[list[int]], temperature: float = 1.0) -> torch.Tensor:
        """``[M, T, V]`` temperature-scaled teacher logits at each response's positions (full
        vocabulary, for distillation objectives; 0 past a response's end)."""
        ids, attn, start, mask = self._pack(contexts, responses)
        out = None
        with self._weights_context():
            for rows, w in self._plan(attn, start, mask):
                part = response_logits(
                    self._model(), ids[rows, : start + w], attn[rows, : start + w], start, temperature
                )
                if out is None:
                    out = torch.zeros(*mask.shape, part.shape[-1], device=mask.device)
                out[rows, :w] = part.float()
        return torch.where(mask[..., None], out, torch.zeros_like(out))

    def _plan(self, attn: torch.Tensor, start: int, mask: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """Micro-batches of the packed rows, grouped by length, with their response widths."""
        index = torch.arange(attn.shape[0], device=attn.device)
        chunks = microbatch.plan(index, attn, start, self.micro_batch_size)
        return [(rows, microbatch.response_width(mask, rows)) for rows in chunks]

    def _pack(self, contexts: list[list[int]], responses: list[list[int]]):
        ids, attn, start, mask = pack(contexts, responses, self.tokenizer.pad_token_id)
        device = next(self.policy.parameters()).device
        return ids.to(device), attn.to(device), start, mask.to(device)

    def _model(self) -> torch.nn.Module:
        return self.copy if self.copy is not None else self.policy

    def _weights_context(self):
        import contextlib

        if self.weights == "base" and self.copy is None:
            return self.policy.disable_adapter()
        return contextlib.nullcontext()

    @torch.no_grad()
    def fill(
        self,
        inputs: CreditInputs,
        batch: RolloutBatch,
        credit: CreditAssigner,
        temperature: float = 1.0,
        rows: torch.Tensor | None = None,
        student_fn=None,
    ) -> None:
        """Set ``inputs.pos_logprobs``/``neg_logprobs`` for what ``credit`` needs.

        Rows whose group has no usable wrong answer get ``neg_logprobs = student_logprobs``
        (``P_T- := P_S``, RLSD exactly); ``inputs.has_negative`` marks the others.

        Args:
            inputs: the credit inputs to complete (``student_logprobs`` must be set).
            batch: the rollout batch.
            credit: the rule; its ``needs_pos``/``needs_neg`` choose the passes.
            temperature: sampling temperature (log-probs match the sampled distribution).
            rows: ``[n]`` rollout indices to score (default all); the others stay 0.
            student_fn: ``rows -> [n, T]`` student log-probs, called only for the fallback rows
                that have no wrong answer, when ``inputs.student_logprobs`` was not computed there.
        """
        g = batch.group_size
        n = batch.num_rollouts
        feedback = [self.group_feedback(batch, p) for p in range(n // g)]
        self.last_contexts = [(f.pos, f.neg) for f in feedback]
        contexts: list[list[int]] = []
        responses: list[list[int]] = []
        pos_at: list[int] = []  # score row of rollout i's c+ context
        neg_of: list[int] = []  # rollouts that have a c- context ...
        neg_at: list[int] = []  # ... and the score row of that context
        wanted = range(n) if rows is None else [int(i) for i in rows]
        for i in wanted:
            fb, prompt = feedback[i // g], batch.prompts[i // g]
            if credit.needs_pos:
                pos_at.append(len(contexts))
                contexts.append(self.context_ids(prompt, fb.pos))
                responses.append(batch.response_ids[i])
            if credit.needs_neg and fb.neg is not None:
                neg_of.append(i)
                neg_at.append(len(contexts))
                contexts.append(self.context_ids(prompt, fb.neg))
                responses.append(batch.response_ids[i])
        width = batch.response_mask.shape[1]
        scores = None
        if contexts:
            scores = self.score(contexts, responses, temperature)[:, :width]
            # the scored rows' longest response can be shorter than the batch's
            scores = torch.nn.functional.pad(scores, (0, width - scores.shape[1]))
        device = inputs.student_logprobs.device
        if credit.needs_pos:
            pos = torch.zeros(batch.response_mask.shape, device=device)
            if pos_at:
                pos[list(wanted)] = scores[pos_at]
            inputs.pos_logprobs = pos
        if credit.needs_neg:
            neg = inputs.student_logprobs.clone()
            has_neg = torch.zeros(n, dtype=torch.bool, device=device)
            if neg_of:
                neg[neg_of] = scores[neg_at]
                has_neg[neg_of] = True
            fallback = [i for i in wanted if not has_neg[i]]
            if fallback and student_fn is not None:
                idx = torch.tensor(fallback, device=device)
                student = student_fn(idx)
                neg[idx] = student
                inputs.student_logprobs[idx] = student
            inputs.neg_logprobs = neg
            inputs.has_negative = has_neg

"""Self-distillation objectives: OPSD, SDPO and HDPO (docs/algorithms.md §4).

Each matches the student's next-token distribution on its own rollouts to a *teacher*: the
same model (live, base, synced or EMA weights, a :class:`~cepo.teacher.TeacherWeights`
strategy) shown privileged context. They differ in which rows get the term, what the teacher sees, and the
divergence:

- :class:`OPSD`: every rollout; the reference solution; generalized JSD over the full
  vocabulary; fixed teacher (the initial weights) by default.
- :class:`SDPO`: rollouts whose group holds *another* success; that successful rollout;
  JSD over the student's top-K tokens plus a tail bucket, each token weighted by
  ``min(exp(logp - logp_old), is_cap)``; EMA teacher.
- :class:`HDPO`: prompts where every rollout failed; the policy samples again with the
  answer in context (privileged rollouts), and the correct ones are distilled into the plain
  prompt; added to the GRPO loss.

Unlike a credit rule, these terms move probability on tokens the student did not sample: the
teacher's whole distribution is the target. That is the information leak the CEPO paper
blames for OPSD/SDPO falling below the base (tests/test_objectives.py shows it).
"""

from __future__ import annotations

from typing import Literal

import torch

from cepo import distributed
from cepo.objectives.base import MicroBatch, Objective, check_weight
from cepo.objectives.divergence import full_vocab_jsd, topk_tail_jsd
from cepo.policy import PolicyRef
from cepo.prompts.formats import Placement
from cepo.prompts.templates import OPSD_TEMPLATE, RAW_TEMPLATE, SDPO_TEMPLATE, check
from cepo.rollout.batch import RolloutBatch, concat
from cepo.rollout.generator import RolloutGenerator
from cepo.scoring import Scorer
from cepo.teacher import EMA, Base, Live, TeacherWeights, pack_contexts


class SelfDistillation(Objective):
    """Shared machinery: a teacher pass, per-row teacher contexts, a per-token divergence.

    Subclasses choose the rows and their feedback (:meth:`feedback`) and the divergence
    (:meth:`divergence`).

    Args:
        weight: coefficient of the distillation term.
        pg_weight: coefficient of the clipped surrogate (0: distillation alone).
        template: teacher context with ``{prompt}`` and ``{feedback}``.
        placement: where ``template`` goes (``cepo.prompts.formats``): ``user`` wraps the user turn's
            text and renders the chat again (instruction templates), ``assistant`` fills
            ``{prompt}`` with the rendered prompt (the feedback starts the assistant turn). Under
            the ``Plain`` prompt format both give the same text.
        teacher_weights: the teacher's weights (``cepo.teacher.Live``, ``Base``, ``Synced``,
            ``EMA``); default: the subclass's.
    """

    default_weights: type[TeacherWeights] = Live

    def __init__(
        self,
        weight: float = 1.0,
        pg_weight: float = 0.0,
        template: str = RAW_TEMPLATE,
        teacher_weights: TeacherWeights | None = None,
        placement: Placement = "user",
    ) -> None:
        super().__init__()
        check_weight(f"{self.name}.weight", weight)
        check_weight(f"{self.name}.pg_weight", pg_weight)
        self.weight = weight
        self.pg_weight = pg_weight
        self.template = check(template, f"{self.name}.template")
        self.placement = placement
        self.teacher_weights = teacher_weights if teacher_weights is not None else self.default_weights()
        self._contexts: dict[int, list[int]] = {}
        self._cached: dict[int, torch.Tensor] = {}  # row -> teacher logits, when computed in prepare
        self._loss_sum, self._loss_tokens = 0.0, 0.0

    # -- hooks -------------------------------------------------------------------------
    def setup(self, policy: PolicyRef, sampler: RolloutGenerator | None, scorer: Scorer) -> None:
        super().setup(policy, sampler, scorer)
        self.teacher_weights.setup(policy.model)

    def context_ids(self, batch: RolloutBatch, group: int, feedback: str) -> list[int]:
        """Token ids of the teacher context for prompt ``group`` of ``batch`` with ``feedback``."""
        src = batch.provenance
        text = src.format.with_feedback(
            src.conversation(group), self.template, self.placement, self.policy.tokenizer, feedback=feedback
        )
        return self.policy.encode(text, src.image(group))

    def feedback(self, batch: RolloutBatch) -> dict[int, tuple[int, str]]:
        """``row -> (prompt index, feedback)`` for the rows that get the term."""
        raise NotImplementedError

    def divergence(self, mb: MicroBatch, local: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``[m, T]`` per-token loss for micro-batch rows ``local`` (grad through ``mb``)."""
        raise NotImplementedError

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, advantages: torch.Tensor) -> None:
        chosen = self.feedback(batch)
        self._contexts = {row: self.context_ids(batch, group, fb) for row, (group, fb) in chosen.items()}
        active = torch.zeros(batch.num_rollouts, dtype=torch.bool, device=batch.rewards.device)
        if chosen:
            active[list(chosen)] = True
        self.active = active
        self._metrics["active_frac"] = float(active.float().mean())  # next to build_samples' metrics
        self._loss_sum, self._loss_tokens = 0.0, 0.0
        self._cached: dict[int, torch.Tensor] = {}
        if chosen and self.weight != 0 and self._teacher_is_sharded():
            # The teacher runs the FSDP-sharded policy: a forward pass in the update loop would be
            # a collective that only the ranks holding active rows enter (a hang). Its logits are
            # computed here instead, on the step's gathered weights (the module calls prepare
            # inside cepo.distributed.gathered), at the cost of holding them for the step. With
            # model.num_minibatches > 1 the teacher is then the weights the step started from.
            rows = sorted(chosen)
            logits = self._teacher_logits(batch, rows, batch.temperature, batch.rewards.device)
            self._cached = {r: logits[i] for i, r in enumerate(rows)}

    def _teacher_is_sharded(self) -> bool:
        with self.teacher_weights.model() as model:
            return distributed.is_sharded(model)

    def _teacher_logits(self, batch: RolloutBatch, rows: list[int], temperature: float, device) -> torch.Tensor:
        """``[len(rows), T_max, V]`` teacher logits (the model's dtype) at the response positions of ``rows``."""
        src = batch.provenance
        packed = pack_contexts(
            [self._contexts[r] for r in rows],
            [src.response_ids[r] for r in rows],
            self.policy.tokenizer.pad_token_id,
            temperature,
            device,
        )
        if src.images is not None:  # the teacher sees the row's images too
            packed.images = [src.images[r // batch.group_size] for r in rows]
            packed.vision = src.vision
        with self.teacher_weights.model() as model:
            return self.scorer.logits(model, packed)

    def token_loss(self, mb: MicroBatch) -> torch.Tensor:
        out = torch.zeros_like(mb.logp)
        picked = [(i, r) for i, r in enumerate(mb.rows.tolist()) if r in self._contexts]
        if not picked or self.weight == 0:
            return out
        local = torch.tensor([i for i, _ in picked], device=out.device)
        rows = [r for _, r in picked]
        if self._cached:
            longest = max(self._cached[r].shape[0] for r in rows)
            teacher = torch.stack(
                [torch.nn.functional.pad(self._cached[r], (0, 0, 0, longest - self._cached[r].shape[0])) for r in rows]
            )
        else:
            teacher = self._teacher_logits(mb.batch, rows, mb.temperature, out.device)
        width = out.shape[1]
        teacher = torch.nn.functional.pad(teacher[:, :width], (0, 0, 0, width - min(teacher.shape[1], width)))
        per_token = self.divergence(mb, local, teacher)
        per_token = torch.where(mb.mask[local], per_token, torch.zeros_like(per_token))
        out = out.index_put((local,), self.weight * per_token)
        self._loss_sum += float(per_token.detach().sum())
        self._loss_tokens += float(mb.mask[local].sum())
        return out

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if self._loss_tokens:
            out["divergence"] = self._loss_sum / self._loss_tokens  # per active token, before weight
        self._loss_sum, self._loss_tokens = 0.0, 0.0
        return out

    def on_step_end(self, rl_step: int) -> None:
        self.teacher_weights.on_step_end(rl_step)

    def state_dict(self) -> dict:
        return self.teacher_weights.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.teacher_weights.load_state_dict(state)


def response_text(batch: RolloutBatch, row: int, tokenizer) -> str:
    """Row ``row``'s response decoded without EOS/padding."""
    return tokenizer.decode(batch.provenance.response_ids[row], skip_special_tokens=True).strip()


class OPSD(SelfDistillation):
    """On-policy self-distillation: per-token generalized JSD over the full vocabulary between
    the student and the teacher shown the reference solution, on every rollout.

    Args:
        b: JSD coefficient (0: forward KL ``KL(p_T||p_S)``, 1: reverse KL, 0.5: JSD).
        feedback_source: ``solution`` (the reference solution; the answer where a task has
            none) or ``answer``.
        weight, pg_weight: OPSD alone (``pg_weight: 0``, default) or added to GRPO with a weight.
        template: the teacher context (default: the paper's wording, ``cepo.prompts.templates.OPSD_TEMPLATE``).
        teacher_weights: ``Base`` by default (the paper's fixed teacher), or Live/Synced/EMA.
        placement: as :class:`SelfDistillation` (``user``: the instruction in the user turn).
    """

    name = "opsd"
    default_weights = Base

    def __init__(
        self,
        b: float = 0.5,
        feedback_source: Literal["solution", "answer"] = "solution",
        weight: float = 1.0,
        pg_weight: float = 0.0,
        template: str = OPSD_TEMPLATE,
        teacher_weights: TeacherWeights | None = None,
        placement: Placement = "user",
    ) -> None:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"opsd.b must be in [0, 1], got {b}")
        super().__init__(weight, pg_weight, template, teacher_weights, placement)
        self.b = b
        self.feedback_source = feedback_source

    def feedback(self, batch: RolloutBatch) -> dict[int, tuple[int, str]]:
        g, src = batch.group_size, batch.provenance
        out = {}
        for row in range(batch.num_original or batch.num_rollouts):
            p = row // g
            solution = src.solutions[p].strip() if self.feedback_source == "solution" else ""
            out[row] = (p, solution or src.answers[p])
        return out

    def divergence(self, mb: MicroBatch, local: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return full_vocab_jsd(mb.logits[local], teacher_logits, self.b)


class SDPO(SelfDistillation):
    """Self-distilled policy optimization: each rollout whose group holds another success is
    distilled towards the teacher shown that successful attempt.

    The per-token loss is ``min(exp(logp - logp_old), is_cap) * JSD_alpha`` on the student's
    top-``top_k`` tokens plus a tail bucket. The demonstration for row ``i`` is the next
    successful row of its group after ``i`` (cyclically), never ``i`` itself; a group whose only
    success is ``i`` gives ``i`` no term (as ``dont_reprompt_on_self_success`` in the authors'
    code).

    Args:
        alpha: JSD coefficient (0: forward KL, 1: reverse KL).
        feedback_source: what the teacher sees of the demonstration: ``rollout`` (its full text,
            the paper) or ``answer`` (its extracted final answer only).
        top_k: student top-K support (the paper: 100).
        is_cap: cap of the per-token importance ratio.
        weight, pg_weight: SDPO replaces the policy-gradient loss by default (``pg_weight: 0``).
        template: the teacher context (default: the paper's, ``cepo.prompts.templates.SDPO_TEMPLATE``).
        teacher_weights: ``EMA`` (tau 0.05) by default.
        placement: as :class:`SelfDistillation` (``user``: the demonstration in the user turn).
    """

    name = "sdpo"
    default_weights = EMA

    def __init__(
        self,
        alpha: float = 0.5,
        feedback_source: Literal["rollout", "answer"] = "rollout",
        top_k: int = 100,
        is_cap: float = 2.0,
        weight: float = 1.0,
        pg_weight: float = 0.0,
        template: str = SDPO_TEMPLATE,
        teacher_weights: TeacherWeights | None = None,
        placement: Placement = "user",
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"sdpo.alpha must be in [0, 1], got {alpha}")
        if top_k < 1:
            raise ValueError(f"sdpo.top_k must be >= 1, got {top_k}")
        if not is_cap > 0:
            raise ValueError(f"sdpo.is_cap must be > 0, got {is_cap}")
        super().__init__(weight, pg_weight, template, teacher_weights, placement)
        self.alpha = alpha
        self.feedback_source = feedback_source
        self.top_k = top_k
        self.is_cap = is_cap

    def feedback(self, batch: RolloutBatch) -> dict[int, tuple[int, str]]:
        g = batch.group_size
        out = {}
        tokenizer = self.policy.tokenizer
        for p in range((batch.num_original or batch.num_rollouts) // g):
            wins = [p * g + j for j in range(g) if bool(batch.correct[p * g + j])]
            for i in range(p * g, (p + 1) * g):
                others = [w for w in wins if w != i]
                if not others:
                    continue
                demo = min(others, key=lambda w: (w - i) % g)  # the next success after i
                extracted = batch.provenance.extracted[demo]
                if self.feedback_source == "answer" and extracted:
                    out[i] = (p, extracted.strip())
                else:
                    out[i] = (p, response_text(batch, demo, tokenizer))
        return out

    def divergence(self, mb: MicroBatch, local: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        jsd = topk_tail_jsd(mb.logits[local], teacher_logits, self.top_k, self.alpha)
        ratio = torch.exp((mb.logp[local] - mb.old_logp[local]).detach().clamp(-20, 20)).clamp(max=self.is_cap)
        return ratio * jsd


class HDPO(SelfDistillation):
    """GRPO plus distillation on the prompts where every rollout failed.

    For each such prompt the policy samples ``group_size`` *privileged* rollouts with the
    answer in context (``template``), verified like any rollout. The correct ones are appended
    to the batch under the plain prompt, kept out of the surrogate (``row_weight`` 0), and get
    a full-vocabulary JSD towards the teacher that sees the privileged context, weighted by
    ``weight`` (the paper's ``lam``). Choices the description leaves open: the privileged
    context is the raw hint (the answer after the prompt), the teacher is the live policy, and
    failed privileged rollouts are dropped.

    Args:
        b: JSD coefficient (0: forward KL, 1: reverse KL).
        weight: ``lam``, the coefficient of the distillation term.
        template: the privileged context, ``{prompt}`` and ``{feedback}`` (the answer).
        teacher_weights: ``Live`` by default.
        placement: as :class:`SelfDistillation` (``assistant``: the answer starts the assistant turn).
    """

    name = "hdpo"

    def __init__(
        self,
        b: float = 0.5,
        weight: float = 0.5,
        template: str = RAW_TEMPLATE,
        teacher_weights: TeacherWeights | None = None,
        placement: Placement = "assistant",
    ) -> None:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"hdpo.b must be in [0, 1], got {b}")
        super().__init__(weight, 1.0, template, teacher_weights, placement)
        self.b = b

    def build_samples(self, batch: RolloutBatch) -> RolloutBatch:
        g = batch.group_size
        failed = [p for p in range(batch.num_rollouts // g) if not bool(batch.correct[p * g : (p + 1) * g].any())]
        self._metrics = {"groups": float(len(failed))}
        if not failed:
            return batch
        tokenizer, src = self.policy.tokenizer, batch.provenance
        privileged = [self.context_ids(batch, p, src.answers[p]) for p in failed]
        extra = self.sampler.sample(
            privileged,
            [src.prompts[p] for p in failed],
            [src.answers[p] for p in failed],
            [src.solutions[p] for p in failed],
            g,
            messages=[src.conversation(p) for p in failed],
            images=None if src.images is None else [src.images[p] for p in failed],
        )
        self._metrics["privileged_success"] = float(extra.correct.float().mean())
        # the student side: the same responses under the plain prompt
        extra = extra.with_provenance(prompt_ids=[src.prompt_ids[p] for p in failed])
        return concat(batch, extra, tokenizer.pad_token_id, b_weight=0.0)

    def feedback(self, batch: RolloutBatch) -> dict[int, tuple[int, str]]:
        g, answers = batch.group_size, batch.provenance.answers
        start = batch.num_original if batch.num_original is not None else batch.num_rollouts
        return {
            row: (row // g, answers[row // g]) for row in range(start, batch.num_rollouts) if bool(batch.correct[row])
        }

    def divergence(self, mb: MicroBatch, local: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return full_vocab_jsd(mb.logits[local], teacher_logits, self.b)

"""One rollout step in plain torch: advantages, evidence, credit, objective terms and updates.

:class:`RolloutStep` runs everything a rollout batch does to the policy, with no Trainer: a test
(or a notebook) builds it from a policy, a scorer, the strategies and an optimizer, and calls it
on a batch. :class:`~cepo.module.RLModule` wraps it for Lightning: it hands over Lightning's
backward (precision, DDP), optimizer and scheduler, and logs what the step returns.

1. group advantages ``A_i`` from the verified rewards (``cepo.advantages``);
2. token advantages from the pluggable :class:`~cepo.credit.CreditAssigner`, from the
   evidence it asks for (``cepo.evidence``);
3. ``num_minibatches`` optimizer updates of the clipped surrogate (``cepo.loss``) plus the
   objective's terms, each accumulated over micro-batches so that the gradient equals the full
   mini-batch's (the normalisers span the mini-batch on every process).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from cepo import distributed, evidence
from cepo.advantages import group_advantages
from cepo.credit import CreditAssigner
from cepo.evidence import CreditRecord
from cepo.loss import aggregate, clipped_surrogate, k3_kl
from cepo.objectives import MicroBatch, Objective
from cepo.rollout.batch import RolloutBatch
from cepo.scoring import Scorer, microbatch
from cepo.scoring.logprobs import token_entropy, token_logprobs
from cepo.step_stats import NonFiniteError, UpdateStats, check_mismatch
from cepo.teacher import TeacherContexts, TeacherWeights


@dataclass
class StepSettings:
    """The update's settings (``RLModule``'s arguments of the same names)."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    c_dual: float | None = 3.0
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    advantage_scale: Literal["std", "none"] = "std"
    num_minibatches: int = 1
    skip_zero_loss_rows: bool = True
    grad_clip: float | None = 1.0
    kl_coef: float = 0.0
    tis_cap: float | None = None
    mismatch_warn: float = 1e-3
    mismatch_stop: float | None = None
    max_nonfinite: int = 3


@dataclass
class StepResult:
    """What a rollout step did.

    Attributes:
        batch: the batch trained on (the rollouts plus the objective's appended rows).
        advantages: ``[N]`` sequence advantages of ``batch``.
        stats: the updates' statistics (``cepo.step_stats.UpdateStats.result``).
        timings: seconds per stage (``samples``, ``old_logprobs``, ``teacher``, ``train``).
        record: the credit assignment, for the token-weight logger.
        updates: optimizer updates applied (skipped ones not counted).
        stop: the engine/trainer log-prob gap exceeded ``mismatch_stop``: nothing was applied.
    """

    batch: RolloutBatch
    advantages: torch.Tensor
    stats: dict[str, float]
    timings: dict[str, float]
    record: CreditRecord
    updates: int = 0
    stop: bool = False


@dataclass
class RolloutStep:
    """A rollout step's parts. ``backward`` defaults to ``loss.backward()``; ``reference`` is the
    initial policy (the KL term and ``reference`` evidence), None when nothing reads it."""

    policy: torch.nn.Module
    scorer: Scorer
    credit: CreditAssigner
    teacher: TeacherContexts
    teacher_weights: TeacherWeights
    objective: Objective
    settings: StepSettings = field(default_factory=StepSettings)
    reference: TeacherWeights | None = None
    nonfinite_in_a_row: int = 0
    rl_step: int = 0

    def __call__(
        self,
        batch: RolloutBatch,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        backward: Callable[[torch.Tensor], None] | None = None,
        rl_step: int = 0,
    ) -> StepResult:
        """Train on ``batch`` (rollout step ``rl_step``, counted from 0, for messages)."""
        self.rl_step = rl_step
        t_start = time.perf_counter()
        s = self.settings
        stage = distributed.stage
        with stage("objective samples"):
            batch = self.objective.build_samples(batch)  # e.g. CIPO's corrections
        t_samples = time.perf_counter()
        advantages = group_advantages(batch.rewards, batch.group_size, s.advantage_scale)
        if batch.row_weight is not None:
            advantages = advantages * batch.row_weight
        old_logprobs = None
        if s.num_minibatches > 1 or s.tis_cap is not None:
            with stage("old log-probs"):
                old_logprobs = self.logprobs(batch)  # the ratio needs every row
        t_old = time.perf_counter()
        with stage("evidence (student and teacher passes)"):
            inputs = evidence.gather(
                self.credit.needs(),
                batch,
                advantages,
                self.policy,
                self.scorer,
                self.teacher,
                self.teacher_weights,
                old_logprobs,
                self.reference,
            )
        t_teacher = time.perf_counter()
        credit = self.credit.assign(inputs)
        record = CreditRecord(batch, inputs, credit, self.credit)
        with stage("objective"):
            self.objective.prepare(batch, advantages)
        ref_logprobs = None
        if s.kl_coef > 0:
            with stage("KL reference"), self.reference.model() as reference:
                ref_logprobs = self.logprobs(batch, reference)
        is_weight = None
        if s.tis_cap is not None and batch.engine_logprobs is not None:
            is_weight = torch.exp(old_logprobs - batch.engine_logprobs).clamp(max=s.tis_cap)
        with stage("update (forward/backward, optimizer)"):
            result = self.update(
                batch, credit.token_advantages, old_logprobs, ref_logprobs, is_weight, optimizer, scheduler, backward
            )
        stats, updates, stop = result
        timings = {
            "samples": t_samples - t_start,
            "old_logprobs": t_old - t_samples,
            "teacher": t_teacher - t_old,
            "train": time.perf_counter() - t_teacher,
        }
        return StepResult(batch, advantages, stats, timings, record, updates, stop)

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """``[N, T]`` no-grad log-probs of the sampled tokens under ``model`` (default the policy)."""
        return self.scorer.logprobs(model or self.policy, batch.packed())[0]

    def update(self, batch, token_adv, old_logprobs, ref_logprobs, is_weight, optimizer, scheduler, backward):
        """``num_minibatches`` optimizer updates over group-aligned mini-batches; returns
        ``(stats, updates applied, stop)``."""
        distributed.release(self.policy)  # FSDP: the training passes run sharded
        backward = backward or (lambda loss: loss.backward())
        s = self.settings
        device = batch.input_ids.device
        world = distributed.world_size()
        g = batch.group_size
        n_groups = batch.num_rollouts // g
        k = s.num_minibatches
        # exactly k group-aligned mini-batches, so every DDP rank takes k optimizer steps even
        # when objectives appended a different number of rows on each rank
        bounds = [(i * n_groups) // k for i in range(k + 1)]
        stats = UpdateStats(k, ref_logprobs is not None, device)
        if batch.engine_logprobs is not None and old_logprobs is not None:
            stats.gap((old_logprobs - batch.engine_logprobs).abs()[batch.response_mask])
        objective = self.objective
        applied, stop = 0, False
        for i in range(k):
            mb = slice(bounds[i] * g, bounds[i + 1] * g)
            mb_mask = batch.response_mask[mb]
            # rows kept out of the surrogate (row_weight 0, e.g. HDPO's privileged rollouts) do
            # not dilute its token mean
            pg_mask = mb_mask if batch.row_weight is None else mb_mask[batch.row_weight[mb] != 0]
            normaliser = max(distributed.normaliser(pg_mask, s.loss_agg, world, device), 1e-8)
            obj_normaliser = None  # the objective's term averages over its active rows' tokens
            if objective.active is not None:
                active = mb_mask[objective.active[mb]]
                obj_normaliser = distributed.normaliser(active, s.loss_agg, world, device)
            packed = batch.packed()
            rows = range(mb.start, mb.stop)
            if s.skip_zero_loss_rows and ref_logprobs is None:  # rows whose loss is identically zero are not run
                rows = microbatch.loss_rows(mb, token_adv, objective.pg_weight, objective.active)
            chunks = self.scorer.plan(packed, torch.as_tensor(rows, device=device), self.policy)
            # DDP syncs gradients at every backward: ranks with fewer micro-batches (fewer
            # appended or fewer loss-carrying rows) run zero-loss backward passes to match, and
            # an update with no loss-carrying row anywhere still runs one
            for _ in range(max(distributed.global_max(len(chunks), device), 1) - len(chunks)):
                backward(distributed.zero_loss(self.policy))
            for rows, w, logits in self.scorer.passes(self.policy, packed, chunks):
                m = batch.response_mask[rows, :w]
                logp = token_logprobs(logits, batch.input_ids[rows, batch.response_start :][:, :w])
                old = old_logprobs[rows, :w] if old_logprobs is not None else logp.detach()
                tis = None if is_weight is None else is_weight[rows, :w]
                tok_loss, st = clipped_surrogate(
                    logp, old, token_adv[rows, :w], m, s.eps_low, s.eps_high, s.c_dual, tis
                )
                if objective.pg_weight != 1.0:
                    tok_loss = objective.pg_weight * tok_loss
                kl = None
                if ref_logprobs is not None:
                    kl = torch.where(m, k3_kl(logp, ref_logprobs[rows, :w]), torch.zeros_like(logp))
                    tok_loss = tok_loss + s.kl_coef * kl
                loss = aggregate(tok_loss, m, s.loss_agg, normaliser)
                if obj_normaliser:
                    micro = MicroBatch(batch, rows, logits, logp, old.detach(), m, batch.temperature)
                    extra = objective.token_loss(micro)
                    loss = loss + aggregate(extra, m, s.loss_agg, obj_normaliser)
                backward(loss)
                stats.micro_batch(loss, st, m, token_entropy(logits.detach()), kl)
                if batch.engine_logprobs is not None and old_logprobs is None:
                    stats.gap((logp.detach() - batch.engine_logprobs[rows, :w]).abs()[m])
            outcome = self.optimizer_step(stats, optimizer, scheduler)
            applied += outcome == "applied"
            stop = stop or outcome == "stop"
        out = stats.result()
        if "logprob_gap_mean" in out:  # warns; a stop was decided before the update (in optimizer_step)
            check_mismatch(out["logprob_gap_mean"], s.mismatch_warn, s.mismatch_stop)
        return out, applied, stop

    def optimizer_step(self, stats: UpdateStats, opt, sched) -> str:
        """Clip and step the optimizer and scheduler: ``applied``; ``skipped`` when the gradient
        is not finite (one host read of the norm per update); ``stop`` when the engine gap
        measured for this update is too large (nothing applied)."""
        s = self.settings
        if stats.mismatched(s.mismatch_stop):
            opt.zero_grad(set_to_none=True)
            return "stop"
        params = [p for p in self.policy.parameters() if p.requires_grad]
        clip = s.grad_clip if s.grad_clip is not None else float("inf")
        norm = distributed.clip_grad_norm_(params, clip)
        if not bool(torch.isfinite(norm)):
            opt.zero_grad(set_to_none=True)
            stats.nonfinite()
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= s.max_nonfinite:
                raise NonFiniteError(self.nonfinite_in_a_row, self.rl_step)
            return "skipped"
        self.nonfinite_in_a_row = 0
        stats.grad_norm(norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        return "applied"

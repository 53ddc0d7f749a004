"""``RLModule``: the policy and its rollout step (``cepo.step``), as a LightningModule.

It runs every method: GRPO and the token-level credit rules, the self-distillation objectives
(with or without a policy gradient) and CIPO's corrections. Its step is
:class:`~cepo.step.RolloutStep` (plain torch); here it gets Lightning's backward, optimizer and
scheduler, checkpoints and logging.

One training step is one rollout batch (from :class:`~cepo.rollout.datamodule.RolloutDataModule`):

1. group advantages ``A_i`` from the verified rewards (``cepo.advantages``);
2. token advantages from the pluggable :class:`~cepo.credit.CreditAssigner`, from the
   evidence it asks for (``cepo.evidence``: student log-probs, entropies, teacher passes);
3. ``num_minibatches`` optimizer updates of the clipped surrogate (``cepo.loss``), each
   accumulated over micro-batches so that the gradient equals the full mini-batch's.

Optimization is manual because one rollout batch feeds several optimizer updates and the
token-mean normaliser must span the whole mini-batch. ``trainer.global_step`` therefore
counts optimizer updates; :attr:`RLModule.rl_step` counts rollout batches.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from cepo import distributed, evidence
from cepo.bases.warmup import resolve_model_path
from cepo.credit import CreditAssigner, MixedCredit
from cepo.credit.uniform import Uniform
from cepo.evidence import CreditRecord
from cepo.lora import LoraSettings
from cepo.objectives import Objective
from cepo.policy import PolicyRef, export_hf, load_policy
from cepo.rollout.batch import RolloutBatch
from cepo.rollout.datamodule import DataLink, RolloutDataModule
from cepo.rollout.evaluator import EvalMetrics
from cepo.scoring import Scorer
from cepo.step import RolloutStep, StepSettings
from cepo.step_stats import allowed_lag, check_lag, log_step, step_metrics
from cepo.teacher import Live, Reference, TeacherContexts, TeacherWeights
from cepo.vision import VisionSettings


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


class RLModule(L.LightningModule):
    """Policy-gradient training with pluggable token-level credit assignment.

    Args:
        model_path: a Hugging Face model folder, or ``builtin`` for the built-in
            arithmetic base (made by the cached supervised warm-up on first use).
        credit: the credit rule (``Uniform`` = GRPO, ``EvidenceRatio`` = RLSD,
            ``Contrastive`` = CEPO, or any :class:`~cepo.credit.CreditAssigner`).
        teacher: the teacher contexts (``c+``/``c-``, template, feedback) of rules that read
            teacher evidence.
        teacher_weights: the weights the teachers run with (``cepo.teacher.Live``, default;
            ``Base``, ``Synced``, ``EMA``).
        objective: loss terms and samples beyond the clipped surrogate (``cepo.objectives``:
            OPSD, SDPO, HDPO, CIPO); default none, i.e. the surrogate alone.
        optimizer: optimizer factory (default AdamW, lr 1e-4, weight decay 0.01).
        lr_scheduler: optional scheduler factory, stepped after every optimizer update.
        lora: train a LoRA adapter (``on``), all weights (``off``), or decide by size
            (``auto``: LoRA from 50M parameters up, so the tiny built-in model trains fully).
        lora_settings: LoRA rank, alpha, dropout and target modules.
        vision: image settings of a vision-language policy (pixel bounds, a trainable vision tower).
        dtype: parameter dtype, ``float32`` or ``bfloat16`` (GPU).
        eps_low: lower ratio clip bound (docs/algorithms.md §1).
        eps_high: upper ratio clip bound.
        c_dual: dual-clip constant for negative advantages (None disables it).
        loss_agg: ``token_mean`` over the mini-batch, or ``seq_mean``.
        advantage_scale: ``std`` (GRPO) or ``none`` (Dr.GRPO).
        num_minibatches: optimizer updates per rollout batch (the paper uses 2).
        micro_batch_size: rows per forward pass (0: a whole mini-batch at once), for training and
            for every no-grad pass (old log-probs, evidence, teachers, distillation logits). Rows
            are grouped by length and each pass is trimmed to its longest row (``cepo.scoring.microbatch``).
        max_tokens_per_micro_batch: padded tokens per forward pass (null: micro-batches by rows
            only): length-grouped rows join a micro-batch while it holds at most this many tokens
            (rows x (longest prompt + longest response); with ``share_prompts``, distinct contexts x
            longest prompt + rows x longest response), at least one row, for training and every
            no-grad pass; with ``micro_batch_size`` > 0 both limits apply. The gradient is unchanged.
        skip_zero_loss_rows: leave rows whose loss is identically zero (zero token advantages,
            no KL, outside the objective's term) out of the forward/backward passes. The
            gradient is unchanged; ``entropy`` and the clip and log-prob-gap statistics then
            cover the trained rows only (a step that trains no row logs none of them).
        grad_clip: max gradient norm (None: no clipping).
        kl_coef: coefficient of the k3 KL penalty to the initial policy (0: off).
        tis_cap: truncated importance-sampling correction for engine/trainer mismatch:
            per-token weight ``min(exp(logp_trainer - logp_engine), tis_cap)`` (None: off).
        mismatch_warn: warn when the mean |engine - trainer| log-prob gap exceeds this.
        mismatch_stop: stop training when it exceeds this, before the update it measured (not
            applied). None: never.
        max_nonfinite: an optimizer update whose gradient is not finite (NaN/Inf loss or gradient)
            is skipped and counted (``train/nonfinite_updates``); this many in a row stop training
            with an error.
        gradient_checkpointing: trade compute for memory in the policy forward (transformers'
            activation checkpointing: each layer's activations are recomputed in the backward).
            It drops the key/value cache that ``share_prompts`` needs, so contexts are not shared.
        share_prompts: run each distinct context (a group's prompt, images included) once per
            micro-batch for all its rows in the training pass and the full-logit passes, forward
            and backward (``cepo.scoring.shared_prompt``): the same gradient as plain passes, checked on the
            first rows of each model type (off where it disagrees, and for the training pass of
            an FSDP-sharded policy, whose ranks must match forward for forward).
    """

    def __init__(
        self,
        model_path: str = "builtin",
        credit: CreditAssigner | None = None,
        teacher: TeacherContexts | None = None,
        teacher_weights: TeacherWeights | None = None,
        objective: Objective | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lora: Literal["auto", "on", "off"] = "auto",
        lora_settings: LoraSettings | None = None,
        vision: VisionSettings | None = None,
        dtype: Literal["float32", "bfloat16"] = "float32",
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        c_dual: float | None = 3.0,
        loss_agg: Literal["token_mean", "seq_mean"] = "token_mean",
        advantage_scale: Literal["std", "none"] = "std",
        num_minibatches: int = 1,
        micro_batch_size: int = 0,
        skip_zero_loss_rows: bool = True,
        grad_clip: float | None = 1.0,
        kl_coef: float = 0.0,
        tis_cap: float | None = None,
        mismatch_warn: float = 1e-3,
        mismatch_stop: float | None = None,
        max_nonfinite: int = 3,
        gradient_checkpointing: bool = False,
        max_tokens_per_micro_batch: int | None = None,
        share_prompts: bool = True,
    ) -> None:
        super().__init__()
        settings = locals()
        for name, ok, wanted in (
            ("eps_low", 0 < eps_low < 1, "in (0, 1)"),
            ("eps_high", eps_high > 0, "> 0"),
            ("c_dual", c_dual is None or c_dual > 1, "> 1 (or null)"),
            ("num_minibatches", num_minibatches >= 1, ">= 1"),
            ("micro_batch_size", micro_batch_size >= 0, ">= 0"),
            (
                "max_tokens_per_micro_batch",
                max_tokens_per_micro_batch is None or max_tokens_per_micro_batch >= 1,
                ">= 1 (or null)",
            ),
            ("kl_coef", kl_coef >= 0, ">= 0"),
            ("tis_cap", tis_cap is None or tis_cap > 0, "> 0 (or null)"),
        ):
            if not ok:
                raise ValueError(f"model.{name} must be {wanted}, got {settings[name]}")
        components = ("credit", "teacher", "teacher_weights", "objective", "optimizer", "lr_scheduler")
        self.save_hyperparameters(ignore=[*components, "lora_settings", "vision"])
        self.automatic_optimization = False
        self.model_path = model_path
        self.credit = credit if credit is not None else Uniform()
        evidence.check(self.credit.reads, f"model.credit ({type(self.credit).__name__})")
        self.teacher = teacher if teacher is not None else TeacherContexts()
        self.teacher_weights = teacher_weights if teacher_weights is not None else Live()
        self.objective = objective if objective is not None else Objective()
        self.scorer = Scorer(micro_batch_size, max_tokens=max_tokens_per_micro_batch, share_prompts=share_prompts)
        self.optimizer_factory = optimizer or _default_optimizer
        self.scheduler_factory = lr_scheduler
        self._check_optimizer()
        self.lora_settings = lora_settings
        self.vision_settings = vision or VisionSettings()
        self.policy: torch.nn.Module | None = None
        self.tokenizer = None
        self.ref: PolicyRef | None = None  # shared with the rollout sampler and the objective
        self.reference: Reference | None = None  # the initial policy: the KL reference, reference evidence
        self.rl_step = 0
        self.rollout_step: RolloutStep | None = None  # built with the policy (configure_model)
        self.data: DataLink | None = None  # what the module reads of the DataModule (setup)
        self.max_lag = 0  # optimizer updates a batch may lag the policy by (set in setup)
        self.last_credit: CreditRecord | None = None
        self.validated_at = -1  # the rollout step of the last validation during fit
        self.validation_pending = False  # restored: the checkpoint came before a validation that was due
        # built in setup from the DataModule's evaluator (the benchmarks and k)
        self.val_metrics: EvalMetrics | None = None

    def _check_optimizer(self) -> None:
        """Build the optimizer once on a dummy parameter so bad settings fail now."""
        try:
            self.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as err:
            raise ValueError(f"model.optimizer: {err}") from None

    @property
    def weight_version(self) -> int:
        """Optimizer updates applied to the policy so far (kept in the shared :class:`PolicyRef`)."""
        return self.ref.version if self.ref is not None else 0

    # -- model -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:  # Lightning calls this hook once per fit/validate
            return
        hp = self.hparams
        strategy = getattr(self._trainer, "strategy", None)
        if isinstance(strategy, FSDPStrategy):  # cepo's sharded paths (cepo.distributed) are FSDP2's
            raise ValueError("trainer.strategy: FSDPStrategy (FSDP1) is unsupported; use ModelParallelStrategy (FSDP2)")
        self.model_path = resolve_model_path(self.model_path)
        vision_args = dataclasses.asdict(self.vision_settings)
        self.policy, self.tokenizer, vision = load_policy(
            self.model_path, hp.lora, self.lora_settings, hp.dtype, hp.gradient_checkpointing, **vision_args
        )
        if isinstance(strategy, ModelParallelStrategy):  # FSDP2
            distributed.shard(self.policy, self.device_mesh)
        self.ref = PolicyRef(self.policy, self.tokenizer, self.model_path, vision=vision)
        if hp.kl_coef > 0 or "reference" in evidence.resources(self.credit.reads):
            self.reference = Reference()
            self.reference.setup(self.policy)
        self.teacher.setup(self.ref)
        self.teacher_weights.setup(self.policy)
        settings = StepSettings(**{f.name: hp[f.name] for f in dataclasses.fields(StepSettings)})
        parts = (self.policy, self.scorer, self.credit, self.teacher, self.teacher_weights, self.objective)
        self.rollout_step = RolloutStep(*parts, settings, self.reference)
        if self.data is not None:  # connect the rollout sampler to the policy once (the engine binds to it)
            self.data.connect(self.ref)
        self.objective.setup(self.ref, self.data.sampler if self.data is not None else None, self.scorer)
        self.policy.train()  # from_pretrained returns eval mode; Lightning expects train mode

    def setup(self, stage: str) -> None:
        # Lightning calls this before configure_model: the one place the module meets the DataModule
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, RolloutDataModule):
            raise TypeError(f"cepo's module runs with a RolloutDataModule, got {type(datamodule).__name__}")
        self.data = data = datamodule.link()
        if stage == "fit" and data.prompts_per_step < self.hparams.num_minibatches:
            raise ValueError(
                f"model.num_minibatches ({self.hparams.num_minibatches}) must be <= data.prompts_per_step "
                f"({data.prompts_per_step}): each mini-batch holds whole groups"
            )
        builds = type(self.objective).build_samples is not Objective.build_samples
        self.max_lag = allowed_lag(data.max_staleness, self.hparams.num_minibatches, self.hparams.tis_cap, builds)
        if self.val_metrics is None:  # built here, so every DDP rank holds the metric even without val batches
            self.val_metrics = data.evaluator.metrics().to(self.device)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"},
        }

    def validation_due(self) -> bool:
        """Whether Lightning runs a validation after the rollout step just trained that has not run
        yet (a checkpoint taken at the end of a step comes before that step's validation)."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or self.validated_at >= self.rl_step:
            return False
        # due even when preemption skips it (the resume runs it)
        return bool(trainer.fit_loop.epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cepo"] = {
            "weight_version": self.weight_version,
            "rl_step": self.rl_step,
            "validated_at": self.validated_at,
            "validation_pending": self.validation_due(),
            "teacher": self.teacher_weights.state_dict(),
            "objective": self.objective.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("cepo", {})
        self.ref.version = state.get("weight_version", 0)  # configure_model ran first
        self.rl_step = state.get("rl_step", 0)
        self.validated_at = state.get("validated_at", -1)
        self.validation_pending = bool(state.get("validation_pending", False))
        self.teacher_weights.load_state_dict(state.get("teacher", {}))
        self.objective.load_state_dict(state.get("objective", {}))

    def export_hf(self, path) -> None:
        """Save the policy (LoRA merged), its tokenizer and generation config, and a VL policy's image
        processor as a Hugging Face folder that loads again (FSDP: call on every rank)."""
        write = self._trainer is None or self.trainer.is_global_zero
        export_hf(self.policy, self.tokenizer, path, write=write, vision=self.ref.vision if self.ref else None)

    @torch.no_grad()
    def policy_logprobs(self, batch: RolloutBatch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """``[N, T]`` no-grad log-probs of the sampled tokens under ``model`` (default the policy)."""
        return self.scorer.logprobs(model or self.policy, batch.packed())[0]

    # -- training ----------------------------------------------------------------------
    @property
    def nonfinite_in_a_row(self) -> int:
        """Optimizer updates in a row skipped for a non-finite gradient."""
        return self.rollout_step.nonfinite_in_a_row if self.rollout_step is not None else 0

    @distributed.policy_gathered  # FSDP: every no-grad pass of the step on whole weights (see RolloutStep.update)
    def training_step(self, batch: RolloutBatch, batch_idx: int) -> None:
        lag = check_lag(batch.provenance.weight_version, self.weight_version, self.max_lag)
        result = self.rollout_step(batch, self.optimizers(), self.lr_schedulers(), self.manual_backward, self.rl_step)
        self.ref.version += result.updates
        if result.stop:  # the engine gap was too large: no process applied the update
            self.trainer.should_stop = True
        self.last_credit = result.record
        self.rl_step += 1
        with distributed.stage("teacher weights and objective after the update"):
            self.teacher_weights.on_step_end(self.rl_step)
            self.objective.on_step_end(self.rl_step)
        stats = result.stats
        stats.update({f"{self.objective.name}/{k}": v for k, v in self.objective.metrics().items()})
        stats.update({"staleness": float(lag)} if self.max_lag else {})
        timings = {**result.batch.timings, **result.timings}
        beta = self.credit.beta if isinstance(self.credit, MixedCredit) else None
        lr = self.optimizers().param_groups[0]["lr"]
        n = batch.num_rollouts
        metrics = step_metrics(batch, result.advantages[:n], stats, timings, self.rl_step, lr, beta)
        log_step(self.loggers, metrics, self.rl_step, latest=self.trainer.callback_metrics)
        self.log("reward", batch.rewards.mean(), prog_bar=True, logger=False, batch_size=n)
        self.log("acc", batch.correct.float().mean(), prog_bar=True, logger=False, batch_size=n)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Lightning's count of steps, its logging step: after a resume that re-ran a validation
        # due at the checkpoint, Lightning counts the resumed step twice
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.rl_step

    def on_train_start(self) -> None:
        if self.validation_pending:
            # Resumed from a checkpoint written before the validation due at its step: have
            # Lightning run it before the next step, as if the run had stopped inside it (its
            # restart skips a due validation otherwise). Its random numbers are the evaluation's own.
            from lightning.pytorch.loops.evaluation_loop import RestartStage

            self.trainer.fit_loop.epoch_loop.val_loop._restart_stage = RestartStage.RESTARTED_MID_EVALUATION
            self.validation_pending = False

    # -- evaluation --------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val_metrics.update(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        # torchmetrics' compute() reduces across processes, so no sync_dist here
        with distributed.stage("validation metrics (reduced across processes)"):
            metrics = self.val_metrics.compute()
        # A row sits at the weight version it measured: a training row at rl_step - 1 (the version
        # that drew its rollouts), a validation at rl_step. During fit Lightning would log it one
        # step early (before it counts the step), so the loggers get it here; validate()'s own
        # rows (base, final, `cepo validate`) are Lightning's, at its count of steps (kept equal
        # to rl_step in on_train_batch_start).
        in_fit = self.trainer.state.fn == "fit"
        self.log_dict(metrics, sync_dist=False, logger=not in_fit)
        if in_fit:
            log_step(self.loggers, metrics, self.rl_step, step=self.rl_step, latest=self.trainer.callback_metrics)
            self.validated_at = self.rl_step
        self.val_metrics.reset()


GRPOModule = RLModule
"""The module's name until 2026-12 (it always ran every method), kept for existing scripts."""

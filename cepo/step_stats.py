"""Statistics of a rollout step: the optimizer updates' sums, and the metrics logged per step.

The update loop adds each micro-batch's loss, clip counts, entropy and KL as tensors to an
:class:`UpdateStats`; nothing is read back to the host until :meth:`UpdateStats.result`, once
per rollout step. :func:`step_metrics` names everything the module logs for the step, and
:func:`log_step` sends a step's metrics to the loggers it is handed.
"""

from __future__ import annotations

import logging

import torch

from cepo import distributed
from cepo.advantages import zero_variance_groups
from cepo.loss import SurrogateStats
from cepo.rollout.batch import RolloutBatch

log = logging.getLogger(__name__)

_TOKEN_KEYS = ("clip_frac", "dual_clip_frac", "entropy", "kl")
_KEYS = ("loss", "grad_norm", "tokens", *_TOKEN_KEYS)


class NonFiniteError(RuntimeError):
    """Too many optimizer updates in a row had a non-finite gradient; none of them was applied."""

    def __init__(self, count: int, rl_step: int) -> None:
        super().__init__(
            f"{count} optimizer updates in a row had a NaN/Inf loss or gradient (model.max_nonfinite), "
            f"the last at rollout step {rl_step + 1}; none was applied, the last checkpoint is intact"
        )


class UpdateStats:
    """Device-side sums over micro-batches and updates.

    Args:
        updates: optimizer updates in the step (``loss`` and ``grad_norm`` are averaged over them).
        with_kl: whether a KL term is in the loss (``kl`` is then reported).
    """

    def __init__(self, updates: int, with_kl: bool, device: torch.device) -> None:
        self.updates = updates
        self.with_kl = with_kl
        self.sums = torch.zeros(len(_KEYS), dtype=torch.float64, device=device)
        self.gaps: list[torch.Tensor] = []
        self.skipped = 0

    def nonfinite(self) -> None:
        """An update skipped for a non-finite gradient."""
        self.skipped += 1

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[_KEYS.index(key)] += value.detach().to(torch.float64)

    @torch.no_grad()
    def micro_batch(
        self,
        loss: torch.Tensor,
        stats: SurrogateStats,
        mask: torch.Tensor,
        entropy: torch.Tensor,
        kl: torch.Tensor | None = None,
    ) -> None:
        """Add a micro-batch: its aggregated ``loss``, surrogate stats, ``[n, T]`` mask,
        ``[n, T]`` entropy and (with a KL term) ``[n, T]`` per-token KL, zero off the mask."""
        ntok = mask.sum().double()
        self._add("loss", loss)
        self._add("tokens", ntok)
        self._add("clip_frac", stats.clip_frac.double() * ntok)
        self._add("dual_clip_frac", stats.dual_clip_frac.double() * ntok)
        self._add("entropy", (entropy * mask).sum())
        if kl is not None:
            self._add("kl", kl.sum())

    def grad_norm(self, norm: torch.Tensor) -> None:
        self._add("grad_norm", norm)

    def gap(self, gaps: torch.Tensor) -> None:
        """Engine/trainer log-prob gaps ``|logp_trainer - logp_engine|`` of response tokens."""
        self.gaps.append(gaps.detach().flatten())

    def mismatched(self, stop: float | None) -> bool:
        """Whether the gaps gathered so far average more than ``stop`` on any process (None:
        never; one host read and one all-reduce, only when a stop is set). Checked before an
        update, so that no process applies it."""
        if stop is None:
            return False
        gaps = torch.cat(self.gaps) if self.gaps else None
        local = gaps is not None and gaps.numel() > 0 and float(gaps.mean()) > stop
        return bool(distributed.global_max(int(local), self.sums.device))

    def result(self) -> dict[str, float]:
        """The step's statistics (one host sync). Per-token ones only when rows were trained."""
        gaps = torch.cat(self.gaps) if self.gaps else None
        extra = torch.stack([gaps.mean(), gaps.max()]).double() if gaps is not None and gaps.numel() else None
        values = (self.sums if extra is None else torch.cat([self.sums, extra])).tolist()
        sums = dict(zip(_KEYS, values))
        applied = self.updates - self.skipped
        out = {"loss": sums["loss"] / self.updates, "grad_norm": sums["grad_norm"] / max(applied, 1)}
        if self.skipped:
            out["nonfinite_updates"] = float(self.skipped)
        if sums["tokens"]:
            for key in _TOKEN_KEYS:
                if key != "kl" or self.with_kl:
                    out[key] = sums[key] / sums["tokens"]
        if gaps is not None:
            out["logprob_gap_mean"] = values[len(_KEYS)] if extra is not None else 0.0
            out["logprob_gap_max"] = values[len(_KEYS) + 1] if extra is not None else 0.0
        return out


def step_metrics(
    batch: RolloutBatch,
    advantages: torch.Tensor,
    stats: dict[str, float],
    timings: dict[str, float],
    rl_step: int,
    lr: float,
    beta: float | None = None,
) -> dict[str, float | torch.Tensor]:
    """The metrics logged for one rollout step (``train/...``, ``time/...``).

    Args:
        batch: the rollouts sampled on the task's prompts.
        advantages: ``[N]`` their sequence advantages.
        stats: :meth:`UpdateStats.result` plus objective metrics (logged as ``train/<key>``).
        timings: seconds per stage (logged as ``time/<stage>``); stages named ``*_background``
            ran in another thread (one-step-off rollouts) and are left out of ``time/total``.
        rl_step: rollout steps done.
        lr: the learning rate of the first parameter group.
        beta: the credit rule's mixing coefficient, for rules that have one.
    """
    rewards = batch.rewards
    mask = batch.response_mask
    n_tokens = float(mask.sum())
    total = sum(v for k, v in timings.items() if not k.endswith("_background"))
    metrics = {
        "train/reward_mean": rewards.mean(),
        "train/reward_std": rewards.std() if rewards.numel() > 1 else 0.0,
        "train/acc": batch.correct.float().mean(),
        "train/zero_var_frac": zero_variance_groups(rewards, batch.group_size).float().mean(),
        "train/response_len": mask.sum(-1).float().mean(),
        "train/adv_abs_mean": advantages.abs().mean(),
        "train/lr": lr,
        "train/rl_step": float(rl_step),
        **{f"train/{k}": v for k, v in batch.info.items()},
        **{f"train/{k}": v for k, v in stats.items()},
        **{f"time/{k}": v for k, v in timings.items()},
        "time/total": total,
        "time/tokens_per_sec": n_tokens / max(total, 1e-9),
        "time/gen_tokens_per_sec": n_tokens / max(timings.get("generate", timings.get("generate_background", 0)), 1e-9),
    }
    if beta is not None:
        metrics["train/beta"] = beta
    if batch.truncated is not None:  # responses cut by max_new_tokens
        metrics["train/truncated_frac"] = batch.truncated.float().mean()
    for name, values in (batch.reward_components or {}).items():
        metrics[f"train/reward/{name}"] = values.mean()
    return metrics


def allowed_lag(staleness: int, num_minibatches: int, tis_cap: float | None, appends_rows: bool) -> int:
    """Optimizer updates a training batch may lag the policy by: 0 (on-policy), or with
    one-step-off rollouts (``staleness`` 1 rollout step) ``num_minibatches``.

    Raises:
        ValueError: one-step-off without ``model.tis_cap`` (the stale rollouts need the importance
            correction), or with an objective that appends rows (they would be sampled with newer
            weights than the batch they join).
    """
    if staleness == 0:
        return 0
    if tis_cap is None:
        raise ValueError("data.one_step_off needs model.tis_cap (the importance correction of stale rollouts)")
    if appends_rows:
        raise ValueError("data.one_step_off cannot be combined with a model.objective that appends rows (CIPO, HDPO)")
    return staleness * num_minibatches


def check_lag(batch_version: int, version: int, allowed: int) -> int:
    """The optimizer updates ``version - batch_version`` a batch lags the policy by.

    Raises:
        RuntimeError: the lag is negative or above ``allowed`` (off-policy rollouts).
    """
    lag = version - batch_version
    if not 0 <= lag <= allowed:
        raise RuntimeError(
            f"off-policy rollouts: generated with weight version {batch_version}, policy is at {version} "
            f"({allowed} updates behind allowed; engine weight sync failed or was skipped)"
        )
    return lag


def check_mismatch(gap: float, warn: float, stop: float | None) -> bool:
    """Warn when the mean engine/trainer log-prob gap exceeds ``warn``; True (stop training)
    when it exceeds ``stop``."""
    if stop is not None and gap > stop:
        log.error("engine/trainer log-prob gap %.2e > mismatch_stop %.2e: stopping, update not applied", gap, stop)
        return True
    if gap > warn:
        log.warning(
            "engine/trainer log-prob gap %.2e > mismatch_warn %.2e: stale weights or numerics differ "
            "(consider model.tis_cap)",
            gap,
            warn,
        )
    return False


def log_step(loggers, metrics: dict, rl_step: int, step: int | None = None, latest: dict | None = None) -> None:
    """Send one rollout step's metrics to every logger in ``loggers``, at step ``rl_step - 1``
    (0-based, as Lightning numbers training batches: the number of updates applied to the policy
    that drew the step's rollouts), or at ``step``.

    Not through ``LightningModule.log``: Lightning keeps a step-level value until the epoch ends,
    so a metric that a step does not produce (per-token statistics when no row trained, a credit
    summary of rollouts that were all correct, ...) would be written again with its last value.
    Here a step's row holds exactly what that step measured. ``latest`` (the trainer's
    ``callback_metrics``, where callbacks and checkpoint monitors read the latest values) gets the
    values too.
    """
    values = {k: float(v) for k, v in metrics.items()}
    for logger in loggers:
        logger.log_metrics(values, step=rl_step - 1 if step is None else step)
    if latest is not None:
        latest.update({k: torch.tensor(v) for k, v in values.items()})

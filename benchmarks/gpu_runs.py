"""In-process ``RLModule`` fits for ``benchmarks/gpu_check.py``: real rollout steps, replayed batches,
hand-made batches, and what each step measured.

A real step is Lightning's ``fit`` with the transformers engine, as ``cepo fit`` runs it; a replayed
step trains on a batch an earlier real step drew (so that variants of the training pass see the same
tokens and generation is paid once). :class:`Recorder` keeps every step's logged metrics
(``train/*``, ``time/*``), its wall time and its peak GPU memory.
"""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from cepo.module import RLModule
from cepo.rollout.batch import Provenance, RolloutBatch, gather_groups, pack
from cepo.rollout.datamodule import RolloutDataModule
from cepo.rollout.engine import SamplingConfig


def share_prompts_available() -> bool:
    """Whether this cepo's ``RLModule`` takes ``share_prompts`` (the shared-prefix training pass)."""
    return "share_prompts" in inspect.signature(RLModule.__init__).parameters


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Recorder(L.Callback):
    """Per training step: the logged metrics, the wall seconds since the previous step's end (the
    rollouts included), the peak GPU memory over that span (None on CPU), and optionally the step's
    batch and its log-probs under the policy before the update (``score``)."""

    def __init__(self, keep_batches: bool = False, score: bool = False) -> None:
        self.keep_batches, self.score = keep_batches, score
        self.steps: list[dict] = []
        self.batches: list[RolloutBatch] = []
        self.logprobs: list[torch.Tensor] = []
        self.mark = 0.0

    def _reset(self, device: torch.device) -> None:
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.mark = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._reset(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.keep_batches:
            self.batches.append(batch)
        if self.score:  # under the run's precision (bf16-mixed: autocast), as the step's own passes
            with trainer.precision_plugin.forward_context():
                self.logprobs.append(pl_module.policy_logprobs(batch).float().cpu())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        device = pl_module.device
        sync(device)
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "time/"))}
        row["wall"] = time.perf_counter() - self.mark
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row["rows"] = batch.num_rollouts
        row["response_tokens"] = float(batch.response_mask.sum())
        row["prompt_len"] = batch.response_start
        self.steps.append(row)
        self._reset(device)


class Lengths(L.Callback):
    """Step ``i`` of a real fit generates up to ``lengths[i]`` tokens (one model load, one warm engine
    for several response lengths)."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths

    def _set(self, trainer, step: int) -> None:
        sampler = trainer.datamodule.sampler
        sampler.sampling = dataclasses.replace(sampler.sampling, max_new_tokens=self.lengths[step])

    def on_train_start(self, trainer, pl_module) -> None:
        self._set(trainer, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 < len(self.lengths):
            self._set(trainer, batch_idx + 1)


class Replay(RolloutDataModule):
    """Training steps receive ``batches`` (in turn) instead of new rollouts, stamped with the module's
    weight version (they stand for on-policy rollouts)."""

    def __init__(self, batches: list[RolloutBatch]) -> None:
        g = batches[0].group_size
        super().__init__(prompts_per_step=batches[0].num_rollouts // g, group_size=g, eval_size=1, eval_k=0)
        self.replayed, self.served = batches, 0

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        if not self.trainer.training:
            return super().on_after_batch_transfer(batch, dataloader_idx)
        out = self.replayed[self.served % len(self.replayed)]
        self.served += 1
        device = self.trainer.lightning_module.device
        moved = {
            f.name: getattr(out, f.name).to(device)
            for f in dataclasses.fields(out)
            if isinstance(getattr(out, f.name), torch.Tensor)
        }
        version = self.trainer.lightning_module.weight_version
        # no engine log-probs (another policy's) and no generation time: a replay measures training
        fields = {**moved, "engine_logprobs": None, "timings": {}}
        return dataclasses.replace(out, **fields).with_provenance(weight_version=version)


def module(model_dir: Path, credit=None, *, lr: float = 1e-6, **kw) -> RLModule:
    """The paper's optimizer (AdamW, weight decay 0.01, constant lr) and ``kw`` as ``RLModule`` args;
    seeded, so that every variant starts from the same LoRA initialisation."""
    L.seed_everything(0, verbose=False)
    return RLModule(
        model_path=str(model_dir),
        credit=credit,
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
        **kw,
    )


def fit(mod: RLModule, data: RolloutDataModule, steps: int, accelerator: str, callbacks=(), **trainer_kw):
    """``steps`` rollout steps of ``mod`` on ``data``, no logger, checkpoint or validation."""
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_steps=steps,
            accelerator=accelerator,
            devices=trainer_kw.pop("devices", 1),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            inference_mode=False,
            default_root_dir=root,
            callbacks=list(callbacks),
            **trainer_kw,
        )
        trainer.fit(mod, datamodule=data)


def real_data(task, prompts: int, group: int, max_new_tokens: int, seed: int = 0) -> RolloutDataModule:
    """Rollouts of ``task`` by the transformers engine (all prompts in one call), temperature 1."""
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, seed=seed)
    return RolloutDataModule(task=task, prompts_per_step=prompts, group_size=group, sampling=sampling, eval_k=0)


def handmade_batch(tok, prompts: list[str], group: int, response_len: int, seed: int = 0) -> RolloutBatch:
    """``group`` random responses of up to ``response_len`` tokens (EOS last) per prompt; in every
    group rollouts 0 and 3 are correct (answer ``7``) and the others answer ``7 + j``, so both
    teachers (``c+`` and ``c-``) have an answer to show."""
    gen = torch.Generator().manual_seed(seed)
    ordinary = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    pids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    rids, rewards, extracted = [], [], []
    for _ in prompts:
        for j in range(group):
            n = response_len - (j * 7919) % max(response_len // 4, 1)
            picks = torch.randint(len(ordinary), (n - 1,), generator=gen).tolist()
            rids.append([ordinary[k] for k in picks] + [tok.eos_token_id])
            good = j % 3 == 0
            rewards.append(float(good))
            extracted.append("7" if good else str(7 + j))
    ids, attn, start, mask = pack([p for p in pids for _ in range(group)], rids, tok.pad_token_id)
    r = torch.tensor(rewards)
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attn,
        response_start=start,
        response_mask=mask,
        rewards=r,
        correct=r >= 1,
        engine_logprobs=None,
        group_size=group,
        provenance=Provenance(
            prompts=list(prompts),
            answers=["7"] * len(prompts),
            solutions=[""] * len(prompts),
            responses=tok.batch_decode(rids, skip_special_tokens=True),
            extracted=extracted,
            prompt_ids=pids,
            response_ids=rids,
            weight_version=0,
        ),
    )


def rows_of(batch: RolloutBatch, groups: slice, pad_id: int) -> RolloutBatch:
    """The batch restricted to prompts ``groups`` (whole groups), re-packed (a DDP rank's share)."""
    return gather_groups([(batch, p) for p in range(groups.start, groups.stop)], pad_id)


def relative(a: float, b: float, scale: float | None = None) -> float:
    """``|a - b| / scale`` (default ``|b|``; ``|a - b|`` when the scale is 0).

    A surrogate loss is compared on the scale of the advantages (``train/adv_abs_mean``): with one
    update on fresh rollouts every ratio is 1 and the loss is minus the token mean of the advantages,
    near 0 when the responses have similar lengths, so its own size says nothing.
    """
    scale = abs(b) if scale is None else abs(scale)
    return abs(a - b) / scale if scale else abs(a - b)

"""The built-in vision-language base: a tiny Qwen2-VL warmed up on the visual arithmetic task.

As for the text base (:mod:`cepo.bases.warmup`), a supervised warm-up stands in for pretraining: the
tiny model (``cepo.bases.tiny.build_tiny_vl``, ~0.2M parameters) imitates reference solutions of
:class:`~cepo.tasks.visual.VisualArithmetic` (two digits in a 56x56 image, the operation in the
text, answered ``" 3+8 = 11"``) until its greedy validation accuracy first reaches
``target_accuracy`` (ending on the copy of its weights closest to the target when a check jumps
past it: :mod:`cepo.bases.warmup_target`), so GRPO groups hold both correct and wrong rollouts.
Half of the examples show the answer right after the prompt first (``"<image>+= 11"``, the ``raw``
teacher context), so the base can read an answer given to it, as the credit rules' teachers need.
The vision tower trains here; reinforcement learning then keeps it frozen by default. Cached in
``$CEPO_CACHE/vl-base-<key>`` (``model.model_path: builtin-vl``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cepo.bases.assets import WARMUP_SUMMARY, cache_dir, publish_warmup
from cepo.bases.tiny import build_tiny_vl, save_tokenizer
from cepo.bases.warmup_target import TargetStop
from cepo.policy import PolicyRef, load_policy
from cepo.prompts.templates import RAW_TEMPLATE, fill
from cepo.rollout.batch import pack
from cepo.rollout.engine import PromptImages, SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.scoring import Packed
from cepo.scoring.logprobs import response_logits, token_logprobs
from cepo.tasks import Example
from cepo.tasks.visual import VisualArithmetic

log = logging.getLogger(__name__)
BUILTIN_VL = "builtin-vl"
VL_WARMUP_VERSION = 1


@dataclass(frozen=True)
class VLWarmupConfig:
    """Settings of the built-in VL warm-up (all of them key the cache).

    Attributes:
        target_accuracy: stop at the first check whose greedy validation accuracy reaches this.
        max_steps: stop here regardless.
        check_every: optimizer steps between accuracy checks while far from the target.
        near_check_every: optimizer steps between checks once a check came within
            ``near_margin`` of the target, so the stop overshoots by at most what these steps
            gain (:mod:`cepo.bases.warmup_target`).
        near_margin: how far below the target a check counts as near it.
        tolerance: a stopping check more than this above the target re-checks the copies of the
            weights made every ``near_check_every`` steps since the previous check, and the base
            is the one closest to the target (:class:`~cepo.bases.warmup_target.TargetStop`).
            0.05 is a third of ``near_margin``, about 1.5 times a check's sampling error at 30%.
        check_size: validation problems per check.
        batch_size: examples per optimizer step.
        lr: AdamW learning rate (after a 50-step linear ramp).
        hint_fraction: share of examples shown with the answer in context first.
        seed: seed of initialisation and data order.
        task_seed: seed of the visual task's splits.
    """

    target_accuracy: float = 0.3
    max_steps: int = 3000
    check_every: int = 100
    near_check_every: int = 10
    near_margin: float = 0.15
    tolerance: float = 0.05
    check_size: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    hint_fraction: float = 0.5
    seed: int = 0
    task_seed: int = 1234


def vl_key(cfg: VLWarmupConfig) -> str:
    blob = json.dumps({"v": VL_WARMUP_VERSION, **asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class VLSFTModule(L.LightningModule):
    """Next-token cross-entropy on reference solutions of image problems (optionally hinted)."""

    def __init__(self, model_path: str, task: VisualArithmetic, cfg: VLWarmupConfig) -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.policy, self.tokenizer, vision = load_policy(model_path, "off", train_vision=True)
        self.ref = PolicyRef(self.policy, self.tokenizer, model_path, vision=vision)
        self.engine = HFEngine()
        self.engine.setup(self.policy, self.tokenizer, model_path)
        self.stop = TargetStop(
            cfg.target_accuracy, cfg.near_margin, cfg.check_every, cfg.near_check_every, cfg.max_steps, cfg.tolerance
        )

    def training_step(self, batch: list[Example], batch_idx: int) -> torch.Tensor:
        rng = random.Random(self.cfg.seed * 7919 + self.global_step)
        vision, tok = self.ref.vision, self.tokenizer
        images = [vision.encode(e.images) for e in batch]
        contexts = [
            self.ref.encode(
                fill(RAW_TEMPLATE, prompt=e.prompt, feedback=e.answer)
                if rng.random() < self.cfg.hint_fraction
                else e.prompt,
                im,
            )
            for e, im in zip(batch, images)
        ]
        targets = [tok(e.solution, add_special_tokens=False).input_ids + [tok.eos_token_id] for e in batch]
        ids, attn, start, mask = pack(contexts, targets, tok.pad_token_id)
        rows = Packed(ids, attn, start, mask, images=images, vision=vision)
        logits = response_logits(
            self.policy, ids, attn, start, 1.0, rows.model_inputs(self.policy, torch.arange(len(batch)))
        )
        loss = -token_logprobs(logits, ids[:, start:])[mask].mean()
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        checked = len(self.stop.checks)
        stopped = self.stop.update(
            self.global_step, lambda: self.greedy_accuracy(self.task.split("val")[: self.cfg.check_size]), self.policy
        )
        if len(self.stop.checks) > checked:
            log.info("VL warm-up step %d: greedy val accuracy %.3f", *self.stop.checks[-1])
        if stopped:
            for step, acc in self.stop.rechecks:
                log.info("VL warm-up: the weights of step %d re-checked: greedy val accuracy %.3f", step, acc)
            log.info("VL warm-up ends with the weights of step %d (greedy val accuracy %.3f)", *self.stop.chosen)
            self.trainer.should_stop = True

    def greedy_accuracy(self, examples: list[Example]) -> float:
        vision = self.ref.vision
        images = [vision.encode(e.images) for e in examples]
        ids = [self.ref.encode(e.prompt, im) for e, im in zip(examples, images)]
        self.engine.sync_weights(self.policy, self.global_step)
        gen = self.engine.generate(
            ids, 1, SamplingConfig(temperature=0.0, max_new_tokens=16), PromptImages(images, vision)
        )
        texts = self.tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        return sum(self.task.is_correct(t, e.answer) for t, e in zip(texts, examples)) / len(examples)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.policy.parameters(), lr=self.cfg.lr, weight_decay=0.01)
        ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        rows = self.task.split("train")
        return DataLoader(rows, batch_size=self.cfg.batch_size, shuffle=True, drop_last=True, collate_fn=lambda r: r)


def run_vl_warmup(out: Path, cfg: VLWarmupConfig) -> dict:
    """Train the VL base into ``out`` and return its summary."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    build_tiny_vl(work / "init", seed=cfg.seed)
    module = VLSFTModule(str(work / "init"), VisualArithmetic(seed=cfg.task_seed), cfg)
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=work,
        gradient_clip_val=1.0,
    )
    trainer.fit(module)
    module.policy.save_pretrained(work / "model")
    save_tokenizer(module.tokenizer, work / "model")
    module.ref.vision.processor.save_pretrained(work / "model")
    stop = module.stop
    step, acc = stop.chosen or stop.checks[-1]  # at max_steps below the target: the last check
    return publish_warmup(
        work, out, asdict(cfg), step, stop.checks, final=acc, stopped_at=trainer.global_step, rechecks=stop.rechecks
    )


def builtin_vl_base(cfg: VLWarmupConfig | None = None) -> Path:
    """The cached built-in VL base folder, made by :func:`run_vl_warmup` if missing."""
    cfg = cfg or VLWarmupConfig()
    out = cache_dir() / f"vl-base-{vl_key(cfg)}"
    if not (out / WARMUP_SUMMARY).is_file():
        log.warning("building the built-in vision-language base (supervised warm-up, cached in %s)", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        run_vl_warmup(out, cfg)
    return out

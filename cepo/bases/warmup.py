"""The supervised warm-up that makes the built-in base policy (a Lightning run, cached).

A randomly initialised tiny model (``cepo.bases.tiny``) is trained on reference solutions of the
built-in arithmetic task until its greedy validation accuracy first reaches
``target_accuracy`` (or ``max_steps`` pass), so that GRPO groups hold both correct and wrong
rollouts. A share ``hint_fraction`` of the examples shows the answer in context first, laid
out exactly as the ``raw`` teacher context (``"{prompt} {answer}"`` then the solution), so the
base can read an answer given to it, as the credit assigners' teachers need.

The result is an ordinary Hugging Face folder under the cache directory (``$CEPO_CACHE``,
default ``~/.cache/cepo``), keyed by a hash of every setting, and is reused when present.

The constant learning rate is deliberate. A warm-up decayed over 550 steps (``lr_decay_steps``)
reached the same greedy accuracy in 600 steps instead of 1600, but it left a base that GRPO
barely moved: +1.4 points in 300 default steps (seed 0), where this one gained +12.6 with the
same settings and code (docs/results.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from cepo.bases import assets
from cepo.bases.assets import WARMUP_SUMMARY, cache_dir, publish_warmup
from cepo.bases.tiny import build_tiny, save_tokenizer
from cepo.progress import steps_progress_bar
from cepo.prompts.templates import RAW_TEMPLATE, fill
from cepo.rollout.batch import pack
from cepo.rollout.engine import SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.tasks import Arithmetic, Example, FillerArithmetic

log = logging.getLogger(__name__)
WARMUP_VERSION = 1
"""Bump when the warm-up recipe changes so stale cached bases are not reused."""


@dataclass(frozen=True)
class WarmupConfig:
    """Settings of the built-in warm-up (all of them key the cache).

    Attributes:
        target_accuracy: stop at the first check whose greedy validation accuracy reaches this.
        max_steps: stop here regardless.
        check_every: optimizer steps between accuracy checks.
        check_size: validation problems per check.
        batch_size: examples per optimizer step.
        lr: AdamW learning rate.
        lr_warmup_steps: linear learning-rate warm-up.
        lr_decay_steps: after the warm-up, decay the learning rate linearly to 10% over this
            many steps, then hold it (0: constant).
        hint_fraction: share of examples shown with the answer in context first.
        seed: seed of initialisation and data order.
        task_seed: seed of the built-in task's splits.
        task: which built-in task the base learns: ``arithmetic`` (:class:`~cepo.tasks.Arithmetic`,
            the ``builtin`` base) or ``filler`` (:class:`~cepo.tasks.FillerArithmetic`, the
            ``builtin-filler`` base), at its defaults.
        max_new_tokens: response length of the greedy accuracy checks.
    """

    target_accuracy: float = 0.3
    max_steps: int = 4000
    check_every: int = 100
    check_size: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    lr_warmup_steps: int = 50
    lr_decay_steps: int = 0
    hint_fraction: float = 0.5
    seed: int = 0
    task_seed: int = 1234
    task: Literal["arithmetic", "filler"] = "arithmetic"
    max_new_tokens: int = 40


# Settings added after bases were published: left out of the key at these values, so the
# bases made before they existed keep their folder names.
_KEY_DEFAULTS = {"lr_decay_steps": 0, "task": "arithmetic", "max_new_tokens": 40}

WARMUP_TASKS: dict[str, type[Arithmetic]] = {"arithmetic": Arithmetic, "filler": FillerArithmetic}
"""The task each ``WarmupConfig.task`` names."""

BUILTIN_BASES = {
    "builtin": WarmupConfig(),
    "builtin-filler": WarmupConfig(task="filler", max_new_tokens=80),
}
"""The ``model.model_path`` names of the built-in text bases and the warm-up that makes each."""


def warmup_key(cfg: WarmupConfig) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if _KEY_DEFAULTS.get(k, object()) != v}
    blob = json.dumps({"v": WARMUP_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def lr_factor(cfg: WarmupConfig, step: int) -> float:
    """The warm-up's learning-rate multiplier at optimizer step ``step`` (from 0)."""
    ramp = min(1.0, (step + 1) / cfg.lr_warmup_steps)
    if not cfg.lr_decay_steps:
        return ramp
    done = min(1.0, max(0, step + 1 - cfg.lr_warmup_steps) / cfg.lr_decay_steps)
    return ramp * (1.0 - 0.9 * done)


class SFTModule(L.LightningModule):
    """Next-token cross-entropy on response tokens of (optionally hinted) solutions.

    Args:
        model_path: Hugging Face folder of the model to train (saved back by :meth:`save`).
        task: the task whose reference solutions are imitated.
        cfg: warm-up settings.
    """

    def __init__(self, model_path: str, task: Arithmetic, cfg: WarmupConfig) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.task = task
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.policy = AutoModelForCausalLM.from_pretrained(model_path)
        self.engine = HFEngine(compact=False)  # the published bases were checked with generate()
        self.engine.setup(self.policy, self.tokenizer, model_path)
        self.val_accuracy: list[tuple[int, float]] = []

    def encode(self, examples: list[Example], hinted: list[bool], rng: random.Random):
        tok = self.tokenizer
        contexts = [
            tok(
                fill(RAW_TEMPLATE, prompt=e.prompt, feedback=e.answer) if h else e.prompt,
                add_special_tokens=False,
            ).input_ids
            for e, h in zip(examples, hinted)
        ]
        solutions = [self.task.training_solution(e, rng) for e in examples]
        targets = [tok(s, add_special_tokens=False).input_ids + [tok.eos_token_id] for s in solutions]
        return pack(contexts, targets, tok.pad_token_id)

    def training_step(self, batch: list[Example], batch_idx: int) -> torch.Tensor:
        rng = random.Random(self.cfg.seed * 7919 + self.global_step)
        hinted = [rng.random() < self.cfg.hint_fraction for _ in batch]
        # The solutions' own stream (free filler, when the task has any), apart from the hints'.
        solution_rng = random.Random((self.cfg.seed * 7919 + self.global_step) * 2 + 1)
        ids, attn, start, mask = self.encode(batch, hinted, solution_rng)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = self.policy(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
        logits = logits[:, start - 1 : -1]
        loss = torch.nn.functional.cross_entropy(logits[mask], ids[:, start:][mask])
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        if step % self.cfg.check_every == 0 or step >= self.cfg.max_steps:
            acc = self.greedy_accuracy(self.task.split("val")[: self.cfg.check_size])
            self.val_accuracy.append((step, acc))
            self.log("sft/val_acc", acc, prog_bar=True)
            log.info("warm-up step %d: greedy val accuracy %.3f", step, acc)
            if acc >= self.cfg.target_accuracy:
                self.trainer.should_stop = True

    def greedy_accuracy(self, examples: list[Example]) -> float:
        ids = [self.tokenizer(e.prompt, add_special_tokens=False).input_ids for e in examples]
        gen = self.engine.generate(ids, 1, SamplingConfig(temperature=0.0, max_new_tokens=self.cfg.max_new_tokens))
        texts = self.tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        return sum(self.task.is_correct(t, e.answer) for t, e in zip(texts, examples)) / len(examples)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.policy.parameters(), lr=self.cfg.lr, weight_decay=0.01)
        ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(self.cfg, s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        rows = self.task.split("train")
        return DataLoader(rows, batch_size=self.cfg.batch_size, shuffle=True, drop_last=True, collate_fn=lambda r: r)

    def save(self, path: Path) -> None:
        self.policy.save_pretrained(path)
        save_tokenizer(self.tokenizer, path)


def run_warmup(out: Path, cfg: WarmupConfig) -> dict:
    """Train a base policy into ``out`` and return its summary."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    build_tiny(work / "init", seed=cfg.seed)
    task = WARMUP_TASKS[cfg.task](seed=cfg.task_seed)  # the built-in task at its defaults
    module = SFTModule(str(work / "init"), task, cfg)
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=work,
        gradient_clip_val=1.0,
        callbacks=[steps_progress_bar()],  # "Step N/M": the warm-up is sized in steps, not epochs
    )
    trainer.fit(module)
    module.save(work / "model")
    return publish_warmup(work, out, asdict(cfg), trainer.global_step, module.val_accuracy)


def builtin_base(cfg: WarmupConfig | None = None) -> Path:
    """The cached built-in base model folder, made by :func:`run_warmup` if missing."""
    cfg = cfg or WarmupConfig()
    out = cache_dir() / f"base-{warmup_key(cfg)}"
    if not (out / WARMUP_SUMMARY).is_file():
        log.warning("building the built-in base model (supervised warm-up, cached in %s)", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        run_warmup(out, cfg)
    return out


BUILTIN = "builtin"
"""The ``model.model_path`` that names the built-in base."""


def resolve_model_path(model_path: str) -> str:
    """``builtin`` / ``builtin-filler`` / ``builtin-vl`` become the cached warm-up folders of the
    text / filler-task / vision-language base (built on first use), ``asset:<name>`` a prepared
    asset (:mod:`cepo.bases.assets`); else the folder as is."""
    if model_path in BUILTIN_BASES:
        return str(builtin_base(BUILTIN_BASES[model_path]))
    if model_path == "builtin-vl":
        from cepo.bases.warmup_vl import builtin_vl_base

        return str(builtin_vl_base())
    model_path = assets.resolve(model_path)
    if not Path(model_path).is_dir():
        raise FileNotFoundError(
            f"model.model_path: {model_path!r} is not a folder (cepo never downloads weights; "
            "point it at a Hugging Face model folder, or use 'builtin')"
        )
    return model_path


def warmup_main(argv: list[str]) -> None:
    """``cepo warmup``: build (or find) the cached built-in base and print its folder."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="cepo warmup", description=__doc__.split("\n")[0])
    parser.add_class_arguments(WarmupConfig, "warmup")
    parser.add_argument("--force", type=bool, default=False, help="Rebuild even if cached.")
    cfg = parser.parse_args(argv)
    wcfg = WarmupConfig(**vars(cfg.warmup))
    out = cache_dir() / f"base-{warmup_key(wcfg)}"
    if cfg.force:
        shutil.rmtree(out, ignore_errors=True)
    path = builtin_base(wcfg)
    summary = json.loads((path / WARMUP_SUMMARY).read_text())
    print(f"base model: {path}\nsteps: {summary['steps']}, greedy val accuracy: {summary['final_val_accuracy']}")

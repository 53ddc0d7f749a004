"""The supervised warm-up that makes every built-in base policy (a Lightning run, cached).

A randomly initialised tiny model (``cepo.bases.tiny``) is trained on reference solutions of a
built-in task until its greedy validation accuracy first reaches ``target_accuracy`` (or
``max_steps`` pass), so that GRPO groups hold both correct and wrong rollouts. A share
``hint_fraction`` of the examples shows the answer in context first, laid out exactly as the
``raw`` teacher context (``"{prompt} {answer}"`` then the solution), so the base can read an
answer given to it, as the credit assigners' teachers need. The loop, the checks, the saving
and the cache are the same for every kind of base; its model, task, loss and stop come from the
kind (:mod:`cepo.bases.warmup_kinds`: text, vision-language).

The result is an ordinary Hugging Face folder under the cache directory (``$CEPO_CACHE``,
default ``~/.cache/cepo``), named by the kind and a hash of its settings, and reused when present.

The constant learning rate is deliberate. A text warm-up decayed over 550 steps
(``lr_decay_steps``) reached the same greedy accuracy in 600 steps instead of 1600, but it left a
base that GRPO barely moved: +1.4 points in 300 default steps (seed 0), where this one gained
+12.6 with the same settings and code (docs/results.md).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cepo.bases import assets
from cepo.bases.assets import WARMUP_SUMMARY, cache_dir, publish_warmup
from cepo.bases.tiny import save_tokenizer
from cepo.bases.warmup_kinds import VLWarmupConfig, WarmupConfig, WarmupKind
from cepo.policy import PolicyRef, load_policy
from cepo.progress import steps_progress_bar
from cepo.prompts.templates import RAW_TEMPLATE, fill
from cepo.rollout.batch import pack
from cepo.rollout.engine import PromptImages, SamplingConfig
from cepo.rollout.hf_engine import HFEngine
from cepo.scoring import Packed
from cepo.tasks import Example, Task

log = logging.getLogger(__name__)

BUILTIN_BASES: dict[str, WarmupKind] = {
    "builtin": WarmupConfig(),
    "builtin-filler": WarmupConfig(task="filler", max_new_tokens=80),
    "builtin-vl": VLWarmupConfig(),
}
"""The ``model.model_path`` names of the built-in bases and the warm-up that makes each."""


class SFTModule(L.LightningModule):
    """Next-token cross-entropy on response tokens of (optionally hinted) solutions.

    Args:
        model_path: Hugging Face folder of the model to train (saved back by :meth:`save`).
        task: the task whose reference solutions are imitated.
        cfg: the kind of base and its warm-up settings.
    """

    def __init__(self, model_path: str, task: Task, cfg: WarmupKind) -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.policy, self.tokenizer, vision = load_policy(model_path, "off", train_vision=True)
        self.ref = PolicyRef(self.policy, self.tokenizer, model_path, vision=vision)
        # images need the compact decode loop; the published text bases were checked with generate()
        self.engine = HFEngine(compact=vision is not None)
        self.engine.setup(self.policy, self.tokenizer, model_path)
        self.stop = cfg.stop()

    def prompts(self, examples: list[Example], texts: list[str]) -> tuple[list[list[int]], list | None]:
        """Token ids of each example's prompt text, and its images (None for a text model)."""
        vision = self.ref.vision
        images = [vision.encode(e.images) for e in examples] if vision else [None] * len(examples)
        ids = [self.ref.encode(t, im) for t, im in zip(texts, images)]
        return ids, images if vision else None

    def encode(self, examples: list[Example], hinted: list[bool], rng: random.Random) -> Packed:
        """Pack ``examples``' solutions (drawn from ``rng`` when the task varies them) after their
        prompts, or after the hinted context where ``hinted``."""
        tok = self.tokenizer
        texts = [
            fill(RAW_TEMPLATE, prompt=e.prompt, feedback=e.answer) if h else e.prompt for e, h in zip(examples, hinted)
        ]
        contexts, images = self.prompts(examples, texts)
        solutions = [self.task.training_solution(e, rng) for e in examples]
        targets = [tok(s, add_special_tokens=False).input_ids + [tok.eos_token_id] for s in solutions]
        return Packed(*pack(contexts, targets, tok.pad_token_id), images=images, vision=self.ref.vision)

    def training_step(self, batch: list[Example], batch_idx: int) -> torch.Tensor:
        seed = self.cfg.seed * 7919 + self.global_step
        rng = random.Random(seed)
        hinted = [rng.random() < self.cfg.hint_fraction for _ in batch]
        # The solutions' own stream (free filler, when the task has any), apart from the hints'.
        loss = self.cfg.loss(self.policy, self.encode(batch, hinted, random.Random(seed * 2 + 1)))
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        checked = len(self.stop.checks)
        val = lambda: self.greedy_accuracy(self.task.split("val")[: self.cfg.check_size])
        stopped = self.stop.update(self.global_step, val, self.policy)
        if len(self.stop.checks) > checked:
            self.log("sft/val_acc", self.stop.checks[-1][1], prog_bar=True)
            log.info("warm-up step %d: greedy val accuracy %.3f", *self.stop.checks[-1])
        if stopped:
            for step, acc in self.stop.rechecks:
                log.info("warm-up: the weights of step %d re-checked: greedy val accuracy %.3f", step, acc)
            log.info("warm-up ends with the weights of step %d (greedy val accuracy %.3f)", *self.stop.chosen)
            self.trainer.should_stop = True

    def greedy_accuracy(self, examples: list[Example]) -> float:
        ids, images = self.prompts(examples, [e.prompt for e in examples])
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.cfg.max_new_tokens)
        gen = self.engine.generate(ids, 1, sampling, None if images is None else PromptImages(images, self.ref.vision))
        texts = self.tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        return sum(self.task.is_correct(t, e.answer) for t, e in zip(texts, examples)) / len(examples)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.policy.parameters(), lr=self.cfg.lr, weight_decay=0.01)
        ramp = torch.optim.lr_scheduler.LambdaLR(opt, self.cfg.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        rows = self.task.split("train")
        return DataLoader(rows, batch_size=self.cfg.batch_size, shuffle=True, drop_last=True, collate_fn=lambda r: r)

    def save(self, path: Path) -> None:
        self.policy.save_pretrained(path)
        save_tokenizer(self.tokenizer, path)
        if self.ref.vision is not None:
            self.ref.vision.processor.save_pretrained(path)


def run_warmup(out: Path, cfg: WarmupKind) -> dict:
    """Train a base policy of ``cfg``'s kind into ``out`` and return its summary."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    cfg.build_model(work / "init")
    module = SFTModule(str(work / "init"), cfg.build_task(), cfg)
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
    stop = module.stop
    step, acc = stop.chosen or stop.checks[-1]  # at max_steps below the target: the last check
    return publish_warmup(
        work, out, asdict(cfg), step, stop.checks, final=acc, stopped_at=trainer.global_step, rechecks=stop.rechecks
    )


def builtin_base(cfg: WarmupKind | None = None) -> Path:
    """The cached built-in base folder of ``cfg`` (default: the text base), made by
    :func:`run_warmup` if missing."""
    cfg = cfg or WarmupConfig()
    out = cache_dir() / cfg.folder()
    if not (out / WARMUP_SUMMARY).is_file():
        log.warning("building a built-in base model (supervised warm-up, cached in %s)", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        run_warmup(out, cfg)
    return out


def resolve_model_path(model_path: str) -> str:
    """``builtin`` / ``builtin-filler`` / ``builtin-vl`` become the cached warm-up folders of the
    text / filler-task / vision-language base (built on first use), ``asset:<name>`` a prepared
    asset (:mod:`cepo.bases.assets`); else the folder as is."""
    if model_path in BUILTIN_BASES:
        return str(builtin_base(BUILTIN_BASES[model_path]))
    model_path = assets.resolve(model_path)
    if not Path(model_path).is_dir():
        raise FileNotFoundError(
            f"model.model_path: {model_path!r} is not a folder (cepo never downloads weights; "
            "point it at a Hugging Face model folder, or use 'builtin')"
        )
    return model_path


def warmup_main(argv: list[str]) -> None:
    """``cepo warmup``: build (or find) the cached built-in text base and print its folder."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="cepo warmup", description=__doc__.split("\n")[0])
    parser.add_class_arguments(WarmupConfig, "warmup")
    parser.add_argument("--force", type=bool, default=False, help="Rebuild even if cached.")
    cfg = parser.parse_args(argv)
    wcfg = WarmupConfig(**vars(cfg.warmup))
    if cfg.force:
        shutil.rmtree(cache_dir() / wcfg.folder(), ignore_errors=True)
    path = builtin_base(wcfg)
    summary = json.loads((path / WARMUP_SUMMARY).read_text())
    print(f"base model: {path}\nsteps: {summary['steps']}, greedy val accuracy: {summary['final_val_accuracy']}")

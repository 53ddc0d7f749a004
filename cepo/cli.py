"""LightningCLI for ``cepo fit`` / ``cepo validate`` (the ``cepo`` command dispatches here, see
``cepo/__main__.py``).

``cepo fit --config configs/default.yaml [--config configs/credit/contrastive.yaml] [--key value]``
composes YAML files left to right; later files and flags override earlier ones.
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
import time
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from cepo import distributed
from cepo.callbacks import (
    AtomicCheckpointIO,
    BetaSchedule,
    EvalSamplesWriter,
    Preemption,
    ProcessStages,
    TokenWeightLogger,
)
from cepo.callbacks.trackers import SaveConfigToTrackers, TrackerUploads
from cepo.module import RLModule
from cepo.progress import count_steps
from cepo.rollout.datamodule import RolloutDataModule

DIST_TIMEOUT_CPU = 300.0
"""``--dist_timeout`` default on CPU: the longest wait measured here between processes (uneven
generation, a validation's metric reduction) is seconds; a hang is over in 5 minutes."""
DIST_TIMEOUT_GPU = 1800.0
"""On GPUs (Lightning's default): uneven long generations and NCCL start-up can take minutes."""


class CepoCLI(LightningCLI):
    """LightningCLI with one run directory per run and held-out accuracy before and after fit."""

    def add_arguments_to_parser(self, parser) -> None:
        # Always-on callbacks get their own config keys, so YAML files compose without one
        # file's trainer.callbacks list replacing another's.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.save_last": True, "checkpoint.save_top_k": 0, "checkpoint.every_n_train_steps": 50}
        )
        parser.add_lightning_class_args(BetaSchedule, "beta_schedule")
        parser.add_lightning_class_args(TokenWeightLogger, "token_weights")
        parser.add_lightning_class_args(EvalSamplesWriter, "eval_samples")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Run directory name under the loggers' save_dir (default: the loggers' own name).",
        )
        parser.add_argument(
            "--run_root",
            type=str | None,
            default=None,
            help="Directory holding run directories (default: the loggers' own save_dir).",
        )
        parser.add_argument(
            "--run_version",
            type=str | None,
            default=None,
            help="Run sub-directory (default: a timestamp shared by every logger).",
        )
        parser.add_argument(
            "--report_base",
            type=bool,
            default=True,
            help="fit only: score the held-out split before training and print base vs final.",
        )
        parser.add_argument(
            "--dist_timeout",
            type=float | None,
            default=None,
            help=(
                "Seconds a process waits for the others at a collective before the run stops with one line "
                "naming the stage (default: 300 on CPU, 1800 on GPUs), from the start of training on; starting "
                "the processes and loading the policy may take up to the default. Multi-process runs only."
            ),
        )
        parser.add_argument(
            "--export_hf",
            type=bool,
            default=True,
            help="fit only: save the trained policy (LoRA merged) as a Hugging Face folder in the run directory.",
        )

    def before_instantiate_classes(self) -> None:
        from cepo import preflight

        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self.previous_rows: list[dict] = []
        if self.subcommand in ("fit", "validate"):
            preflight.check_run_root(cfg.run_root)
            preflight.check_engine(cfg.data.engine, cfg.model.model_path)
        if self.subcommand == "validate":  # one metrics table, printed by after_validate
            self.print_table, cfg.verbose = cfg.verbose, False
        if cfg.trainer.logger in (None, True):  # Lightning's default would write ./lightning_logs
            cfg.trainer.logger = default_logger(cfg.run_root or cfg.trainer.default_root_dir or "runs")
        loggers = cfg.trainer.logger
        if not isinstance(loggers, list):
            loggers = [loggers] if loggers not in (None, True, False) else []
        if self.subcommand in ("fit", "validate") and cfg.get("ckpt_path") == "last":
            first = loggers[0].init_args if loggers else {}
            root = Path(cfg.run_root or first.get("save_dir") or "runs") / (
                cfg.run_name or first.get("name") or "default"
            )
            found = last_checkpoint(root, cfg.run_version)
            where = root / cfg.run_version if cfg.run_version else root
            if found is None and self.subcommand == "validate":
                raise FileNotFoundError(f"ckpt_path last: no checkpoint under {where}")
            print(f"--ckpt_path last: {found or f'no checkpoint under {where}, starting a new run'}", flush=True)
            cfg.ckpt_path = str(found) if found else None
        ckpt = Path(cfg.ckpt_path) if self.subcommand == "fit" and cfg.get("ckpt_path") is not None else None
        if ckpt is not None and ckpt.parent.name == "checkpoints" and cfg.run_version is None:
            # a resumed run continues in the run directory it came from (<root>/<name>/<version>)
            run_dir = ckpt.parent.parent
            cfg.run_root, cfg.run_name, cfg.run_version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        if self.subcommand == "fit" and cfg.get("ckpt_path") is not None and cfg.run_version is not None:
            self.previous_rows = previous_metrics(cfg)
        version = cfg.run_version or time.strftime("%Y%m%d-%H%M%S")
        for lg in loggers:
            args = lg.init_args
            if cfg.run_name is not None and "name" in args:
                args.name = cfg.run_name
            if cfg.run_root is not None and "save_dir" in args:
                args.save_dir = cfg.run_root
            if "version" in args and (args.version is None or cfg.run_version is not None):
                args.version = version

    def instantiate_classes(self) -> None:
        """The classes, then the checks that need the data but no model: a ``fit`` with no full
        step of prompts, or rows with images for a text policy, stops before anything is written."""
        from cepo import preflight

        super().instantiate_classes()
        if self.subcommand in ("fit", "validate"):
            fit = self.subcommand == "fit"
            if fit:
                self.datamodule.check_train(self.trainer.world_size)
            preflight.check_images(self.datamodule, self._cfg().model.model_path, fit)
            preflight.check_budget(self.datamodule, self._cfg().model.model_path)

    def instantiate_trainer(self, **kwargs):
        """The trainer, with checkpoints written atomically unless other plugins are configured."""
        trainer = super().instantiate_trainer(**kwargs)
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO) and cfg.trainer.plugins is None:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        timeout = cfg.get("dist_timeout")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {timeout}")
        if hasattr(trainer.strategy, "_timeout"):  # DDPStrategy, ModelParallelStrategy: the process group's
            on_cpu = trainer.strategy.root_device.type == "cpu"
            default = DIST_TIMEOUT_CPU if on_cpu else DIST_TIMEOUT_GPU
            seconds = timeout if timeout is not None else default
            # joining and loading the policy wait at least the default; the callbacks' first hook
            # then gives the collectives --dist_timeout (distributed.apply_timeout)
            trainer.strategy._timeout = datetime.timedelta(seconds=max(seconds, default))
            distributed.set_timeouts(seconds, max(seconds, default))
        trainer.callbacks.append(ProcessStages())
        trainer.callbacks.append(TrackerUploads())  # token-weight pages to W&B / MLflow, when configured
        count_steps(trainer.callbacks)  # "Step N/M", not "Epoch 0/-2"
        return trainer

    def _cfg(self):
        return self.config[self.subcommand]

    def before_fit(self) -> None:
        if self.previous_rows:  # the resumed run's CSV log keeps the rows of the steps before it
            self.trainer.callbacks.append(KeepRows(self.previous_rows))
        self.base_metrics = None
        base_file = self._run_dir() / "base_metrics.json"
        if self._cfg().get("ckpt_path") is not None:  # a resumed run reported it before
            self.base_metrics = json.loads(base_file.read_text()) if base_file.is_file() else None
        elif self._cfg().report_base:
            self.base_metrics = self._validate("base")
            if self.trainer.is_global_zero:
                base_file.parent.mkdir(parents=True, exist_ok=True)
                base_file.write_text(json.dumps(self.base_metrics, indent=2))

    def _run_dir(self) -> Path:
        return Path(self.trainer.log_dir or self.trainer.default_root_dir).resolve()

    def after_fit(self) -> None:
        final = self._validate("final")
        run_dir = self._run_dir()
        summary = {
            "base": self.base_metrics,
            "final": final,
            "rl_steps": self.model.rl_step,
            "optimizer_steps": self.trainer.global_step,
            "run_dir": str(run_dir),
        }
        if self._cfg().export_hf:  # every process (FSDP gathers the weights); the first one writes
            with distributed.stage("export of hf_model"):
                self.model.export_hf(run_dir / "hf_model")
        if self.trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            acc = "val/acc"
            base = f"{self.base_metrics[acc]:.3f}" if self.base_metrics else "n/a"
            scope = self.datamodule.evaluator.scope()
            print(f"\nheld-out greedy accuracy ({scope}): base {base} -> final {final[acc]:.3f}")
            print(f"run directory: {run_dir}")

    def after_validate(self) -> None:
        """The validate subcommand's metrics table, each metric once (Lightning prints one column
        per DataLoader, each holding every metric logged at the epoch's end)."""
        if getattr(self, "print_table", True) and self.trainer.is_global_zero:
            from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop

            metrics = {k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("val")}
            _EvaluationLoop._print_results([metrics], "validate")

    def _validate(self, label: str) -> dict[str, float]:
        writers = [cb for cb in self.trainer.callbacks if isinstance(cb, EvalSamplesWriter)]
        for writer in writers:
            writer.label = label
        try:
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        finally:
            for writer in writers:
                writer.label = None
        metrics = {k: float(v) for r in results for k, v in r.items()}  # one dict per DataLoader
        if self.trainer.is_global_zero:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()))
            print(f"[{label}] {shown}")
        return metrics


def default_logger(save_dir: str) -> list[Namespace]:
    """The logger of a config that names none: a CSV logger under the run root (``runs``), so the
    run directory is ``<run_root>/<run_name>/<version>`` as with the shipped configs."""
    init = Namespace(save_dir=save_dir, name="default", version=None, flush_logs_every_n_steps=1)
    return [Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=init)]


def last_checkpoint(root: Path, version: str | None = None) -> Path | None:
    """The newest checkpoint of the run ``root/version``, or of any run under ``root``.

    ``--ckpt_path last`` resolves through this: a requeued job, or a sweep re-run, finds its
    latest checkpoint without knowing the run version (a timestamp) or the step.
    """
    dirs = [root / version / "checkpoints"] if version else sorted(root.glob("*/checkpoints"))
    found = [p for d in dirs if d.is_dir() for p in d.glob("*.ckpt")]
    return max(found, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt")) if found else None


def previous_metrics(cfg) -> list[dict]:
    """The rows of the run directory's ``metrics.csv`` (the CSV logger deletes the file when it
    opens an existing directory)."""
    root = Path(cfg.run_root or "runs") / (cfg.run_name or "default") / str(cfg.run_version)
    path = root / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


class KeepRows(Callback):
    """Puts a resumed run's earlier CSV rows back, up to the restored step (none logged twice)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def on_fit_start(self, trainer, pl_module) -> None:
        # on_fit_start, after the checkpoint's restore: a run resumed at max_steps trains nothing,
        # and on_train_start would never come, leaving the CSV logger to overwrite the rows
        if not trainer.is_global_zero:  # the loggers write on the first process only
            return
        # training rows sit at rl_step - 1, a validation's at the rl_step it measured: kept unless
        # the checkpoint came before it (the resume runs it again)
        step, rerun = pl_module.rl_step, pl_module.validation_pending
        kept = [r for r in self.rows if int(float(r.get("step", 0))) < step or (not rerun and _validation_row(r, step))]
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger) and kept:
                writer = logger.experiment
                writer.metrics[:0] = [
                    {k: int(float(v)) if k in ("step", "epoch") else float(v) for k, v in r.items()} for r in kept
                ]
                logger.save()


def _validation_row(row: dict, step: int) -> bool:
    """A row of the validation at rollout step ``step`` (held before that step's checkpoint)."""
    keys = set(row) - {"step", "epoch"}
    return int(float(row.get("step", -1))) == step and bool(keys) and all(k.startswith("val/") for k in keys)


def cli_main(args: list[str] | None = None, run: bool = True) -> CepoCLI:
    """Entry point of ``cepo fit`` / ``cepo validate`` (also used by tests).

    With ``run=False`` the classes are only parsed and instantiated (no subcommand).
    """
    from cepo.preflight import check_config_files

    check_config_files(list(sys.argv[1:] if args is None else args))
    if not run and args and args[0] in ("fit", "validate"):
        args = args[1:]
    return CepoCLI(
        RLModule,
        RolloutDataModule,
        args=args,
        run=run,
        save_config_callback=SaveConfigToTrackers,  # config.yaml, and the config to W&B / MLflow
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},  # bad settings raise; cepo's main prints one line
        subclass_mode_model=False,
        auto_configure_optimizers=False,
    )

"""Shared pieces of the benchmark scripts: short timing runs and result files."""

from __future__ import annotations

import csv
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment for a benchmark's subprocesses: one thread each, no hub
    access (the hubs are unreachable here), plus ``extra``."""
    env = dict(os.environ)
    env.update(
        CEPO_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    return env


class StepClock(L.Callback):
    """Wall-clock time at the end of every training step, callbacks and logging included
    (``time/total`` sums the module's own stages only). Add it to an in-process run with
    ``CLOCK_ARGS``; read the intervals with :func:`wall_seconds`."""

    ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        StepClock.ends.append(time.perf_counter())


CLOCK_ARGS = ["--trainer.callbacks+=common.StepClock"]


def wall_seconds() -> list[float]:
    """Seconds from each step's end to the next one's (steps 2, 3, ...), then reset the clock."""
    ends, StepClock.ends = StepClock.ends, []
    return [b - a for a, b in zip(ends, ends[1:])]


def timing_args(run_root: Path, run_name: str, run_version: str, steps: int, *overlays: str, eval_size: int = 10):
    """``cepo fit`` arguments (after ``fit``) for a timing run of the built-in default plus
    ``overlays`` (paths under ``configs/``): no base evaluation, no mid-run evaluation, no
    checkpoints, no export, no token-weight logging."""
    configs = [arg for overlay in overlays for arg in ("--config", str(ROOT / "configs" / overlay))]
    return [
        "--config",
        str(ROOT / "configs" / "default.yaml"),
        *configs,
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(10**6),
        "--trainer.enable_progress_bar",
        "false",
        "--token_weights.every_n_steps",
        "0",
        "--report_base",
        "false",
        "--export_hf",
        "false",
        "--data.eval_size",
        str(eval_size),
        "--data.eval_k",
        "0",
        "--checkpoint.every_n_train_steps",
        str(10**6),
        "--checkpoint.save_last",
        "false",
        "--run_root",
        str(run_root),
        "--run_name",
        run_name,
        "--run_version",
        run_version,
    ]


def step_rows(metrics_csv: Path, keys: list[str], train_keys: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """``time/<key>`` (and ``train/<key>`` of ``train_keys``) of every training step but the first
    (which pays one-off costs)."""
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("time/total")]
    return [
        {**{k: float(r[f"time/{k}"]) for k in keys}, **{k: float(r[f"train/{k}"]) for k in train_keys}} for r in rows
    ][1:]


def write_results(out: str | Path, name: str, payload: dict, md: str) -> None:
    """Print the Markdown table and write ``<out>/<name>.json`` and ``<out>/<name>.md``."""
    print(md)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{name}.md").write_text(md + "\n")


def alternate(names: list, rounds: int, stages: list[str], run: Callable[[object, Path, str], list[dict]]) -> dict:
    """Mean seconds per stage of each variant, measured side by side.

    ``run(name, tmp_dir, tag)`` runs one variant and returns its step rows (``step_rows``); the
    variants alternate (A B A B ...) for ``rounds`` rounds so machine noise hits them alike.
    """
    samples: dict = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for n in names:
                samples[n] += run(n, Path(tmp), f"round{r}")
    return {n: {s: statistics.mean(x[s] for x in rows) for s in stages} for n, rows in samples.items()}

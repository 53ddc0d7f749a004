"""GRPO step time on the built-in default with the sampling options on and off, side by side.

The variants named by ``--variants`` alternate (A B C A B C ...) so machine noise hits them alike:
``on-policy`` (the default), ``on-policy+tis`` (the default with ``model.tis_cap 2``, which adds
the trainer's old-log-prob pass that one-step-off needs), ``one-step-off``
(``configs/sampling/one_step_off.yaml``) and ``dynamic-sampling`` (``configs/sampling/dapo.yaml``).
Per variant: the wall-clock seconds between the ends of consecutive training steps (the first
step left out), and the main thread's stages from ``metrics.csv``: ``rollouts`` (``time/generate``
plus ``time/score``, or with one-step-off ``time/wait`` for the background batch plus
``time/snapshot``; with dynamic sampling every round), ``old_logprobs``, ``train``. Prints a
table and writes it to ``benchmarks/results/sampling.{json,md}``.

    .venv/bin/python benchmarks/sampling.py [--steps 20] [--rounds 3] [--variants on-policy one-step-off ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import timing_args, write_results

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "on-policy": [],
    "on-policy+tis": ["--model.tis_cap", "2.0"],
    "one-step-off": ["--config", str(ROOT / "configs" / "sampling" / "one_step_off.yaml")],
    "dynamic-sampling": ["--config", str(ROOT / "configs" / "sampling" / "dapo.yaml")],
}
STAGES = ["wall", "rollouts", "old_logprobs", "train"]


def run_once(name: str, steps: int, root: Path, tag: str) -> dict[str, list[float]]:
    run_name = name.replace("+", "_")
    clock = root / f"{run_name}-{tag}.json"
    cmd = [sys.executable, "-m", "cepo", "fit", *timing_args(root, run_name, tag, steps), *VARIANTS[name]]
    cmd += ["--trainer.callbacks", "benchmarks.clock.StepClock"]
    subprocess.run(cmd, env={**os.environ, "CEPO_BENCH_CLOCK": str(clock)}, check=True, capture_output=True, cwd=ROOT)
    ends = json.loads(clock.read_text())
    rows = [r for r in csv.DictReader(open(root / run_name / tag / "metrics.csv")) if r.get("time/total")][1:]

    def stage(row: dict, *keys: str) -> float:
        return sum(float(row[f"time/{k}"]) for k in keys if row.get(f"time/{k}"))

    return {
        "wall": [b - a for a, b in zip(ends, ends[1:])],
        "rollouts": [stage(r, "generate", "score", "wait", "snapshot") for r in rows],
        "old_logprobs": [stage(r, "old_logprobs") for r in rows],
        "train": [stage(r, "train") for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:3])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
    samples: dict[str, dict[str, list[float]]] = {n: {s: [] for s in STAGES} for n in a.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name in a.variants:
                for stage, values in run_once(name, a.steps, Path(tmp), f"round{r}").items():
                    samples[name][stage] += values
    table = {n: {s: statistics.mean(v) for s, v in st.items()} for n, st in samples.items()}
    base = table[a.variants[0]]["wall"]
    lines = [
        "| variant | wall (s/step) | rollouts (s/step) | old_logprobs (s/step) | train (s/step) "
        f"| speed-up vs {a.variants[0]} |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in table.items():
        cells = " | ".join(f"{row[s]:.3f}" for s in STAGES)
        lines.append(f"| {n} | {cells} | {base / row['wall']:.2f} |")
    payload = {"steps_per_run": a.steps, "rounds": a.rounds, "mean_seconds": table, "per_step": samples}
    write_results(a.out, "sampling", payload, "\n".join(lines))


if __name__ == "__main__":
    main()

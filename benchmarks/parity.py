"""Every logged metric of two sets of runs, compared value by value (a refactor's check).

Runs the built-in default for 50 steps and each ``configs/method/*.yaml`` for 10 steps (seed 0)
from two checkouts, then compares every value of every ``metrics.csv`` column but ``time/*``::

    .venv/bin/python benchmarks/parity.py run BEFORE_CHECKOUT runs/before
    .venv/bin/python benchmarks/parity.py run AFTER_CHECKOUT runs/after
    .venv/bin/python benchmarks/parity.py compare runs/before runs/after
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

RUNS = {"default": ([], 50, 25), **{m: ([f"configs/method/{m}.yaml"], 10, 5) for m in ("cipo", "hdpo", "opsd", "sdpo")}}


def run(checkout: Path, out: Path) -> None:
    env = dict(os.environ, CEPO_NUM_THREADS="1", PYTHONPATH=str(checkout))
    for name, (overlays, steps, every) in RUNS.items():
        configs = [a for o in ["configs/default.yaml", *overlays] for a in ("--config", o)]
        args = [*configs, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(every)]
        args += ["--run_name", name, "--trainer.enable_progress_bar", "false", "--export_hf", "false"]
        args += ["--report_base", "false", "--seed_everything", "0", "--run_root", str(out.resolve())]
        subprocess.run([sys.executable, "-m", "cepo", "fit", *args], cwd=checkout, env=env, check=True)


def values(root: Path, name: str) -> dict:
    (path,) = (root / name).rglob("metrics.csv")
    out: dict = {}
    for row in csv.DictReader(open(path)):
        for key, value in row.items():
            if value and key != "step" and not key.startswith("time/"):
                out.setdefault((int(row["step"]), key), []).append(float(value))
    return out


def compare(before: Path, after: Path) -> bool:
    same = True
    for name in RUNS:
        a, b = values(before, name), values(after, name)
        one_side = set(a) ^ set(b)
        pairs = [(x, y) for k in set(a) & set(b) for x, y in zip(a[k], b[k])]
        worst = max((abs(x - y) / max(abs(x), 1e-12) for x, y in pairs), default=0.0)
        identical = sum(x == y for x, y in pairs)
        print(
            f"{name}: {len(pairs)} values, {identical} identical, worst relative difference {worst:.2e}, "
            f"metrics on one side only: {len(one_side)}"
        )
        same &= not one_side and identical == len(pairs)
    return same


if __name__ == "__main__":
    kind, first, second = sys.argv[1:4]
    if kind == "run":
        run(Path(first), Path(second))
    else:
        sys.exit(0 if compare(Path(first), Path(second)) else 1)

"""Steps and training minutes until held-out greedy accuracy first reaches the base + 15 points.

Reads the ``metrics.csv`` of runs made with a validation check every few steps (see
``experiments/README.md``, "Dynamic sampling") and prints one Markdown row per run directory:

    python experiments/to_target.py RUN_DIR [RUN_DIR ...] [--base 0.326] [--points 0.15]

Minutes are the sum of the training steps' measured stages (``time/total``: generation, scoring,
old log-probs, teachers, training; evaluations not included) up to the step of the first check at
or above the target.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path


def row(run_dir: Path, target: float) -> list[str]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    train = [r for r in rows if r.get("time/total")]
    checks = [(int(r["step"]), float(r["val/acc"])) for r in rows if r.get("val/acc") and int(r["step"]) > 0]
    hit = next((c for c in checks if c[1] >= target - 1e-9), None)
    minutes = sum(float(r["time/total"]) for r in train if hit and int(r["step"]) <= hit[0]) / 60

    def mean(key: str) -> str:
        values = [float(r[key]) for r in train if r.get(key)]
        return f"{statistics.mean(values):.2f}" if values else "-"

    return [
        str(run_dir),
        str(hit[0] + 1) if hit else "not reached",
        f"{hit[1]:.3f}" if hit else "-",
        f"{minutes:.2f}" if hit else "-",
        mean("time/total"),
        mean("time/generate"),
        mean("train/prompts_drawn"),
        mean("train/gen_rounds"),
        mean("train/zero_var_frac"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--base", type=float, required=True, help="the base's greedy val/acc")
    p.add_argument("--points", type=float, default=0.15)
    a = p.parse_args()
    head = ["run", "steps to target", "val/acc then", "train min to target", "s/step", "generate s/step"]
    head += ["prompts drawn/step", "rounds/step", "zero_var_frac"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for run in a.runs:
        print("| " + " | ".join(row(run, a.base + a.points)) + " |")


if __name__ == "__main__":
    main()

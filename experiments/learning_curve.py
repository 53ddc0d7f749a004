"""Held-out accuracy against steps and training minutes, one column per run: the README's curve.

Reads each run's ``metrics.csv`` and prints a Markdown table with one row per validation step:
the step, each run's cumulative training minutes up to it (the sum of the steps' measured stages,
``time/total``: generation, scoring, old log-probs, training; evaluations not included) and each
run's ``val/acc``:

    python experiments/learning_curve.py RUN_DIR [RUN_DIR ...] [--names seed0,seed1]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def curve(run_dir: Path) -> dict[int, tuple[float, float]]:
    """``step -> (training minutes up to the step, val/acc)`` for every validation of a run."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    seconds = {}
    total = 0.0
    for r in sorted((r for r in rows if r.get("time/total")), key=lambda r: int(r["step"])):
        total += float(r["time/total"])
        seconds[int(r["step"])] = total
    out = {}
    for r in rows:
        if r.get("val/acc"):
            step = int(r["step"])
            done = [s for t, s in seconds.items() if t < step]  # a validation at step k follows k steps
            out[step] = ((max(done) if done else 0.0) / 60, float(r["val/acc"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--names", default="", help="comma-separated column names (default: the folders)")
    args = parser.parse_args()
    names = args.names.split(",") if args.names else [p.name for p in args.runs]
    curves = [curve(p) for p in args.runs]
    steps = sorted(set().union(*curves))
    head = ["step"] + [f"{n} min" for n in names] + [f"{n} val/acc" for n in names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for step in steps:
        minutes = [f"{c[step][0]:.1f}" if step in c else "" for c in curves]
        accs = [f"{c[step][1]:.3f}" if step in c else "" for c in curves]
        print("| " + " | ".join([str(step), *minutes, *accs]) + " |")


if __name__ == "__main__":
    main()

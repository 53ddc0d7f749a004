"""GRPO step time on the built-in default with 1 vs 2 torch threads, side by side.

Runs short ``cepo fit`` subprocesses (``CEPO_NUM_THREADS=n``), alternating the thread counts
(1 2 1 2 ...) so machine noise hits both alike. Meaningful only on an otherwise idle machine:
under load, two threads per process ran 10-30x slower here. Prints a table and writes it to
``benchmarks/results/threads.{json,md}``.

    .venv/bin/python benchmarks/threads.py [--steps 12] [--rounds 2] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import alternate, step_rows, timing_args, write_results

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "train", "total"]


def run_once(threads: int, steps: int, root: Path, tag: str) -> list[dict[str, float]]:
    cmd = [sys.executable, "-m", "cepo", "fit", *timing_args(root, f"t{threads}", tag, steps)]
    env = {**os.environ, "CEPO_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # cepo.__main__ reads CEPO_NUM_THREADS
    return step_rows(root / f"t{threads}" / tag / "metrics.csv", STAGES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
    table = alternate(a.threads, a.rounds, STAGES, lambda t, tmp, tag: run_once(t, a.steps, tmp, tag))
    base = table[a.threads[0]]["total"]
    lines = [
        "| threads | " + " | ".join(f"{s} (s/step)" for s in STAGES) + f" | speed-up vs {a.threads[0]} |",
        "|---" * (len(STAGES) + 2) + "|",
    ]
    for t, row in table.items():
        lines.append(f"| {t} | " + " | ".join(f"{row[s]:.3f}" for s in STAGES) + f" | {base / row['total']:.2f} |")
    payload = {"steps_per_run": a.steps, "rounds": a.rounds, "mean_seconds": table}
    write_results(a.out, "threads", payload, "\n".join(lines))


if __name__ == "__main__":
    main()

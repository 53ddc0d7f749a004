"""Time per training step of each credit rule on the built-in default, side by side.

Runs short ``cepo fit`` jobs in one process, alternating the rules (A B A B ...) so machine
noise hits both alike, with beta held constant so the teacher passes run on every step.
Prints a table of seconds per stage and the ratio to uniform, and writes it to
``benchmarks/results/step_time.{json,md}``.

    .venv/bin/python benchmarks/step_time.py [--steps 12] [--rounds 2] [--credits uniform contrastive]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import alternate, step_rows, timing_args, write_results

from cepo.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "score", "old_logprobs", "teacher", "train", "total"]


def run_once(credit: str, steps: int, root: Path, tag: str, extra: list[str]) -> list[dict[str, float]]:
    # beta held constant so the teacher passes run on every step
    cli_main(
        [
            "fit",
            *timing_args(root, credit, tag, steps, f"credit/{credit}.yaml"),
            "--beta_schedule.kind",
            "constant",
            *extra,
        ]
    )
    return step_rows(root / credit / tag / "metrics.csv", STAGES)


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--credits", nargs="+", default=["uniform", "contrastive"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("extra", nargs="*", help="extra `cepo fit` flags, after --")
    a = p.parse_args()
    table = alternate(a.credits, a.rounds, STAGES, lambda c, tmp, tag: run_once(c, a.steps, tmp, tag, a.extra))
    base = table[a.credits[0]]["total"]
    lines = [
        "| credit | " + " | ".join(f"{s} (s)" for s in STAGES) + f" | x {a.credits[0]} |",
        "|---" * (len(STAGES) + 2) + "|",
    ]
    for c, t in table.items():
        lines.append(f"| {c} | " + " | ".join(f"{t[s]:.3f}" for s in STAGES) + f" | {t['total'] / base:.2f} |")
    payload = {"steps_per_run": a.steps, "rounds": a.rounds, "mean_seconds": table}
    write_results(a.out, "step_time", payload, "\n".join(lines))


if __name__ == "__main__":
    main()

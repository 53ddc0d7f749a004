"""Training-pass time with and without micro-batch planning, side by side.

``plain`` runs each mini-batch in one forward/backward pass over every row, padded to the
batch's longest row (``micro_batch_size 0``, ``skip_zero_loss_rows false``). ``planned`` groups
rows by length into micro-batches trimmed to their own longest row and leaves out rows whose
loss is identically zero (``cepo.scoring.microbatch``); the gradient is the same (tests/test_microbatch.py).
Short ``cepo fit`` runs of the built-in default alternate (plain planned plain planned ...) in
one process so machine noise hits both alike. Prints a table and writes it to
``benchmarks/results/microbatch.{json,md}``.

    .venv/bin/python benchmarks/microbatch.py [--steps 12] [--rounds 2] [--micro 64] [-- extra fit flags]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import alternate, step_rows, timing_args, write_results

from cepo.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "old_logprobs", "teacher", "train", "total"]


def variants(micro: int) -> dict[str, list[str]]:
    return {
        "plain": ["--model.micro_batch_size", "0", "--model.skip_zero_loss_rows", "false"],
        "planned": ["--model.micro_batch_size", str(micro), "--model.skip_zero_loss_rows", "true"],
    }


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--micro", type=int, default=64, help="micro_batch_size of the planned runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("extra", nargs="*", help="extra `cepo fit` flags, after --")
    a = p.parse_args()
    flags = variants(a.micro)

    def run(name: str, tmp: Path, tag: str) -> list[dict[str, float]]:
        cli_main(["fit", *timing_args(tmp, name, tag, a.steps), *flags[name], *a.extra])
        return step_rows(tmp / name / tag / "metrics.csv", STAGES)

    table = alternate(list(flags), a.rounds, STAGES, run)
    lines = [
        "| variant | " + " | ".join(f"{s} (s/step)" for s in STAGES) + " | train speed-up | step speed-up |",
        "|---" * (len(STAGES) + 3) + "|",
    ]
    plain = table["plain"]
    for name, row in table.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{row[s]:.3f}" for s in STAGES)
            + f" | {plain['train'] / row['train']:.2f} | {plain['total'] / row['total']:.2f} |"
        )
    payload = {
        "steps_per_run": a.steps,
        "rounds": a.rounds,
        "micro_batch_size": a.micro,
        "extra": a.extra,
        "mean_seconds": table,
    }
    write_results(a.out, "microbatch", payload, "\n".join(lines))


if __name__ == "__main__":
    main()

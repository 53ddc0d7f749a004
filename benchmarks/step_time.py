"""Time per training step of each credit rule on the built-in default, side by side.

Runs short ``cepo fit`` jobs in one process, alternating the rules (A B A B ...) so machine
noise hits both alike, with beta held constant so the teacher passes run on every step.
Prints a table of seconds per stage, the wall-clock seconds per step (callbacks and logging
included), the ratio of each to the first rule's in every round and overall, the ratio at equal
work (the first rule's step plus the other's extra stages: the runs' policies part after the
first update, so they generate and train different tokens), the response length and
zero-variance share that the step times depend on, and the load average; writes them to
``benchmarks/results/step_time.{json,md}``.

    .venv/bin/python benchmarks/step_time.py [--steps 12] [--rounds 2] [--credits uniform contrastive]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from common import CLOCK_ARGS, alternate, step_rows, timing_args, wall_seconds, write_results

from cepo.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "score", "old_logprobs", "teacher", "train", "total"]
TRAIN = ("response_len", "zero_var_frac")  # what the stage times scale with
KEYS = [*STAGES, "wall", *TRAIN]


def run_once(credit: str, steps: int, root: Path, tag: str, extra: list[str]) -> list[dict[str, float]]:
    # beta held constant so the teacher passes run on every step
    cli_main(
        [
            "fit",
            *timing_args(root, credit, tag, steps, f"credit/{credit}.yaml"),
            "--beta_schedule.kind",
            "constant",
            *CLOCK_ARGS,
            *extra,
        ]
    )
    rows = step_rows(root / credit / tag / "metrics.csv", STAGES, TRAIN)
    for row, wall in zip(rows, wall_seconds()):
        row["wall"] = wall
    return rows


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--credits", nargs="+", default=["uniform", "contrastive"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("extra", nargs="*", help="extra `cepo fit` flags, after --")
    a = p.parse_args()
    load_before = os.getloadavg()
    per_round: dict[tuple[str, str], dict[str, float]] = {}

    def run(credit, tmp, tag):
        rows = run_once(credit, a.steps, tmp, tag, a.extra)
        per_round[credit, tag] = {k: statistics.mean(r[k] for r in rows) for k in ("total", "wall")}
        return rows

    table = alternate(a.credits, a.rounds, KEYS, run)
    load_after = os.getloadavg()
    first = a.credits[0]
    base = table[first]
    lines = [
        "| credit | "
        + " | ".join(f"{s} (s)" for s in STAGES)
        + f" | wall (s) | total x {first} | wall x {first} | response len | zero-var groups |",
        "|---" * (len(STAGES) + 6) + "|",
    ]
    for c, t in table.items():
        lines.append(
            f"| {c} | "
            + " | ".join(f"{t[s]:.3f}" for s in STAGES)
            + f" | {t['wall']:.3f} | {t['total'] / base['total']:.3f} | {t['wall'] / base['wall']:.3f}"
            + f" | {t['response_len']:.1f} | {t['zero_var_frac']:.2f} |"
        )
    rounds = {
        c: [
            per_round[c, f"round{r}"][k] / per_round[first, f"round{r}"][k] for r in range(a.rounds) for k in ("total",)
        ]
        for c in a.credits[1:]
    }
    lines.append("")
    for c, ratios in rounds.items():
        lines.append(f"total x {first} of {c} per round: " + ", ".join(f"{x:.3f}" for x in ratios))
    # The rules' runs sample and train different tokens (their policies part after the first
    # update), so also: the first rule's step plus the other rule's own extra work, its evidence
    # passes scaled to the first rule's rows with a nonzero advantage (the rows they score).
    same_work = {}
    for c in a.credits[1:]:
        t = table[c]
        rows = (1 - base["zero_var_frac"]) / max(1 - t["zero_var_frac"], 1e-9)
        extra = sum(t[k] * rows - base[k] for k in ("teacher", "old_logprobs"))
        extra += (t["wall"] - t["total"]) - (base["wall"] - base["total"])
        same_work[c] = 1 + extra / base["wall"]
        lines.append(
            f"{c} at {first}'s work: (wall of {first} + {c}'s extra teacher, old log-prob and callback "
            f"seconds, its passes scaled by nonzero-advantage rows x {rows:.2f}) / wall of {first} = {same_work[c]:.3f}"
        )
    lines.append(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    payload = {
        "steps_per_run": a.steps,
        "rounds": a.rounds,
        "mean_seconds": table,
        "per_round": {f"{c}/{tag}": v for (c, tag), v in per_round.items()},
        "same_work_ratio": same_work,
        "load_before": load_before,
        "load_after": load_after,
    }
    write_results(a.out, "step_time", payload, "\n".join(lines))


if __name__ == "__main__":
    main()

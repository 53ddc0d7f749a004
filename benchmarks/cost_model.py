"""A cost model of the training step: step time against rollouts x tokens on the built-in 1M model.

Sweeps prompts per step x group size x response length (the task's number of operations, with
``max_new_tokens`` to match: the built-in base stops by itself, so only longer problems make
longer responses, see ``LENGTHS``) in short in-process ``cepo fit`` runs of the built-in default, in a shuffled
order so that a drift in machine load does not line up with the grid. Each run's steps but the
first give the mean seconds per stage (the logged ``time/*`` metrics) and the wall-clock seconds
per step. Then it fits

    step time = a + b * X              X = rollouts x mean response tokens (the step's tokens)
    step time = a + b * X + c * Z      Z = rollouts x mean response tokens^2 (per-row quadratic)

by least squares, prints the slope, intercept, R^2 and whether the super-linear term is
significant (c > 0 with t > 2, and a better adjusted R^2), fits every stage alone against X (and
the training pass against the tokens it trains: rollouts of groups with a nonzero advantage x
tokens), and gives each stage's share of the step. Writes ``benchmarks/results/cost_model.{json,md}``;
``--refit`` reads such a JSON file and fits its points again.

    .venv/bin/python benchmarks/cost_model.py [--prompts 8 16 32] [--groups 4 8 16] [--lengths 1 2 3]
        [--steps 5] [--credit uniform] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
from pathlib import Path

import torch
from common import CLOCK_ARGS, step_rows, timing_args, wall_seconds, write_results

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "score", "old_logprobs", "teacher", "train", "other"]
"""The module's stages (``time/*``), and ``other``: wall-clock minus their sum (callbacks, logging,
data loading, and weight syncs, which the transformers engine does not need)."""
LENGTHS = {1: (2, 2, 24), 2: (2, 3, 32), 3: (3, 3, 48)}
"""Response-length levels: (min_ops, max_ops, max_new_tokens) of the arithmetic task; 2 is the
default. The built-in base answers them in about 10, 15 and 19 tokens; it was warmed up on 2-3
operations, and on 4 or more it mostly fails (most groups then have zero variance) without
answering at greater length."""


def fit(columns: list[list[float]], y: list[float]) -> dict:
    """Least squares ``y = a + sum_k b_k columns[k]``.

    Returns ``coef`` (``[a, b_1, ...]``), their standard errors ``se`` and t-statistics ``t``
    (None where there are no residual degrees of freedom), ``r2`` and ``adj_r2``.
    """
    import numpy as np

    n, p = len(y), len(columns) + 1
    design = np.column_stack([np.ones(n), *[np.asarray(c, dtype=float) for c in columns]])
    target = np.asarray(y, dtype=float)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    rss, tss = float(resid @ resid), float(((target - target.mean()) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else 1.0
    dof = n - p
    out = {"coef": coef.tolist(), "r2": r2, "adj_r2": 1.0 - (1.0 - r2) * (n - 1) / dof if dof > 0 else None}
    if dof > 0:
        cov = rss / dof * np.linalg.inv(design.T @ design)
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        out["se"] = se.tolist()
        out["t"] = [float(c / s) if s > 0 else math.inf for c, s in zip(coef, se)]
    else:
        out["se"] = out["t"] = None
    return out


def superlinear(points: list[dict]) -> dict:
    """The linear and the super-linear fit of the step time (key ``total``) of ``points``."""
    x = [pt["X"] for pt in points]
    z = [pt["Z"] for pt in points]
    y = [pt["total"] for pt in points]
    lin, quad = fit([x], y), fit([x, z], y)
    t_c = quad["t"][2] if quad["t"] is not None else None
    better = lin["adj_r2"] is not None and quad["adj_r2"] is not None and quad["adj_r2"] > lin["adj_r2"]
    significant = t_c is not None and t_c > 2 and better  # a growing term: c > 0, twice its error
    return {"linear": lin, "superlinear": quad, "superlinear_significant": significant}


def shares(points: list[dict], keys: list[str]) -> dict[str, float]:
    """Each stage's share of the summed wall-clock time of ``points``."""
    wall = sum(pt["wall"] for pt in points)
    return {k: sum(pt[k] for pt in points) / wall for k in keys}


def run_point(prompts: int, group: int, length: int, steps: int, credit: str, root: Path, tag: str) -> dict:
    from cepo.cli import cli_main

    min_ops, max_ops, max_new = LENGTHS[length]
    overlays = [f"credit/{credit}.yaml"] if credit != "uniform" else []
    cli_main(
        [
            "fit",
            *timing_args(root, "cost", tag, steps, *overlays),
            "--data.prompts_per_step",
            str(prompts),
            "--data.group_size",
            str(group),
            "--data.task.init_args.min_ops",
            str(min_ops),
            "--data.task.init_args.max_ops",
            str(max_ops),
            "--data.sampling.max_new_tokens",
            str(max_new),
            "--beta_schedule.kind",
            "constant",
            *CLOCK_ARGS,
        ]
    )
    rows = step_rows(root / "cost" / tag / "metrics.csv", [*STAGES[:-1], "total"], ("response_len", "zero_var_frac"))
    for row, wall in zip(rows, wall_seconds()):
        row["wall"], row["other"] = wall, wall - row["total"]
    point = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    n = prompts * group
    point.update(prompts=prompts, group=group, length=length, rollouts=n)
    point["X"] = n * point["response_len"]
    point["Z"] = n * point["response_len"] ** 2
    return point


def report(points: list[dict], meta: dict) -> tuple[dict, str]:
    fits = superlinear(points)
    stage_fits = {s: fit([[pt["X"] for pt in points]], [pt[s] for pt in points]) for s in [*STAGES, "total", "wall"]}
    # rows of zero-variance groups do not train
    trained = fit([[pt["X"] * (1 - pt["zero_var_frac"]) for pt in points]], [pt["train"] for pt in points])
    share = shares(points, STAGES)
    largest = max(points, key=lambda pt: pt["X"])
    share_largest = shares([largest], STAGES)
    lines = [
        "| prompts | group | length | rollouts | response len | zero-var | X (k tokens) | "
        + " | ".join(STAGES)
        + " | total (s) | wall (s) |",
        "|---" * (len(STAGES) + 9) + "|",
    ]
    for pt in sorted(points, key=lambda pt: pt["X"]):
        lines.append(
            f"| {pt['prompts']} | {pt['group']} | {pt['length']} | {pt['rollouts']} | {pt['response_len']:.1f} | "
            f"{pt['zero_var_frac']:.2f} | {pt['X'] / 1e3:.2f} | "
            + " | ".join(f"{pt[s]:.3f}" for s in STAGES)
            + f" | {pt['total']:.3f} | {pt['wall']:.3f} |"
        )
    lin, quad = fits["linear"], fits["superlinear"]
    se = lin["se"] or [float("nan")] * 2
    lines += [
        "",
        f"linear fit, {len(points)} points: total = {lin['coef'][0]:.3f} s + {lin['coef'][1] * 1e3:.4f} s per 1k "
        f"rollout tokens (+- {se[1] * 1e3:.4f}), R^2 {lin['r2']:.4f}",
        f"with rollouts x tokens^2: c = {quad['coef'][2] * 1e6:.4f} s per 1M (t = "
        + (f"{quad['t'][2]:.2f}" if quad["t"] else "n/a")
        + f"), R^2 {quad['r2']:.4f}; super-linear term significant: {fits['superlinear_significant']}",
        "",
        "| stage | intercept (s) | slope (s per 1k rollout tokens) | R^2 | share of wall | share, largest point |",
        "|---|---|---|---|---|---|",
    ]
    for s in [*STAGES, "total", "wall"]:
        f = stage_fits[s]
        sh = f"{share[s]:.1%} | {share_largest[s]:.1%}" if s in share else " | "
        lines.append(f"| {s} | {f['coef'][0]:.3f} | {f['coef'][1] * 1e3:.4f} | {f['r2']:.3f} | {sh} |")
    lines.append(
        f"| train, against trained tokens | {trained['coef'][0]:.3f} | {trained['coef'][1] * 1e3:.4f} | "
        f"{trained['r2']:.3f} | | |"
    )
    lines.append(f"load average (1, 5, 15 min): before {meta['load_before']}, after {meta['load_after']}")
    payload = {**meta, "points": points, "fit": fits, "stage_fits": stage_fits, "shares": share}
    payload["train_vs_trained_tokens"] = trained
    payload["shares_largest"] = share_largest
    return payload, "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 3], choices=sorted(LENGTHS))
    p.add_argument("--steps", type=int, default=5, help="steps per run (the first is dropped)")
    p.add_argument("--credit", default="uniform", help="a file of configs/credit/ (beta held constant)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="order of the runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--refit", help="a cost_model.json: fit its points again instead of measuring")
    a = p.parse_args()
    if a.refit:
        old = json.loads(Path(a.refit).read_text())
        meta = {k: old[k] for k in ("credit", "steps_per_run", "load_before", "load_after")}
        payload, md = report(old["points"], meta)
        write_results(a.out, "cost_model", payload, md)
        return
    grid = [(pp, g, n) for pp in a.prompts for g in a.groups for n in a.lengths] * a.repeats
    random.Random(a.seed).shuffle(grid)
    meta = {"credit": a.credit, "steps_per_run": a.steps, "load_before": os.getloadavg()}
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (pp, g, n) in enumerate(grid):
            points.append(run_point(pp, g, n, a.steps, a.credit, Path(tmp), f"run{i}"))
            print(
                f"[cost_model] {i + 1}/{len(grid)}: {pp} x {g}, length {n}: {points[-1]['total']:.3f} s/step",
                flush=True,
            )
    meta["load_after"] = os.getloadavg()
    payload, md = report(points, meta)
    write_results(a.out, "cost_model", payload, md)


if __name__ == "__main__":
    main()

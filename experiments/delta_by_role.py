"""Mean |Delta| of CEPO's contrastive evidence on decisive vs filler tokens, over a training run.

On the built-in arithmetic task every response character has a role: *decisive* (digits of an
intermediate result or of the answer), *copied* (operands and operators carried from the line
before) or *filler* (spaces, ``=``). CEPO's evidence ``Delta_t = log P_T+(y_t) - log P_T-(y_t)``
should concentrate on decisive tokens. This script runs ``cepo fit`` with the contrastive rule
(beta held constant so the teacher passes run every step), accumulates |Delta| per role over all
rollout tokens of the run, and prints and writes the table and the decisive/filler ratio to
``experiments/results/delta_by_role.json``.

    .venv/bin/python experiments/delta_by_role.py [--steps 40] [-- extra cepo fit flags]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cepo.callbacks import TokenWeightLogger
from cepo.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--credit", default="contrastive")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "default.yaml"),
                "--config",
                str(ROOT / "configs" / "credit" / f"{a.credit}.yaml"),
                "--trainer.max_steps",
                str(a.steps),
                "--trainer.val_check_interval",
                str(10**6),
                "--beta_schedule.kind",
                "constant",
                "--report_base",
                "false",
                "--export_hf",
                "false",
                "--data.eval_size",
                "100",
                "--data.eval_k",
                "0",
                "--run_root",
                tmp,
                "--run_name",
                "delta",
                "--token_weights.every_n_steps",
                "0",
                *a.extra,
            ]
        )
    logger = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TokenWeightLogger))
    totals = {
        role: {"mean_abs_delta": s / n, "tokens": int(n)}
        for role, (s, n) in logger.role_totals.items()
        if role != "special" and n
    }
    ratio = totals["decisive"]["mean_abs_delta"] / totals["filler"]["mean_abs_delta"]
    print(f"credit rule: {a.credit}, {a.steps} rollout steps on the built-in task")
    print("| role | mean abs Delta | tokens |\n|---|---|---|")
    for role, t in sorted(totals.items()):
        print(f"| {role} | {t['mean_abs_delta']:.4f} | {t['tokens']} |")
    print(f"decisive / filler mean |Delta| = {ratio:.2f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"delta_by_role_{a.credit}.json").write_text(
        json.dumps({"credit": a.credit, "steps": a.steps, "roles": totals, "decisive_over_filler": ratio}, indent=2)
    )


if __name__ == "__main__":
    main()

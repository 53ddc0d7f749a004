"""Per-setting means, over a sweep's runs, of what the credit rules did to each token role.

Reads every run's ``metrics.csv`` under a sweep folder (``cepo sweep`` run directories named
``seed=S_<setting>``) and prints, per setting: the mean over steps and seeds of the logged
``credit/role/<role>/abs_delta_mean`` (the evidence ``|Delta|`` per token role; logged by rules with a
teacher on the steps where beta > 0) and the policy's mean response-token entropy (``train/entropy``) over the first and
the last 5 rollout steps.

    .venv/bin/python experiments/credit_roles.py runs/sweeps/credit_filler
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

ROLES = ("decisive", "copied", "filler")


def run_means(path: Path) -> dict[str, float]:
    """One run's per-role mean |Delta| over its steps and its entropy at the start and the end."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = {}
    for role in ROLES:
        values = [float(r[k]) for r in rows if (k := f"credit/role/{role}/abs_delta_mean") in r and r[k]]
        if values:
            out[role] = statistics.fmean(values)
    entropy = [float(r["train/entropy"]) for r in rows if r.get("train/entropy")]
    if len(entropy) >= 10:
        out["entropy_first5"], out["entropy_last5"] = statistics.fmean(entropy[:5]), statistics.fmean(entropy[-5:])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", type=Path)
    a = p.parse_args()
    by_setting: dict[str, list[dict[str, float]]] = defaultdict(list)
    for metrics in sorted(a.sweep.glob("seed=*/metrics.csv")):
        if (metrics.parent / "summary.json").is_file():  # finished runs only
            by_setting[metrics.parent.name.split("_", 1)[1]].append(run_means(metrics))
    columns = [*ROLES, "entropy_first5", "entropy_last5"]
    print("| setting | runs | " + " | ".join(f"{c} abs Delta" if c in ROLES else c for c in columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for setting, runs in by_setting.items():
        cells = []
        for c in columns:
            values = [r[c] for r in runs if c in r]
            cells.append(f"{statistics.fmean(values):.4f}" if values else "")
        print(f"| {setting} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

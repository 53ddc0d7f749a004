"""The same config and seed give identical metrics on the same machine (one thread); another
seed does not. Times are the only logged values allowed to differ."""

import csv
import json

import pytest

from tests.helpers import fit_args, run_cli


def logged(run_dir):
    """``[(step, metric, value)]`` of every logged value except timings, in file order."""
    rows = csv.DictReader(open(run_dir / "metrics.csv"))
    return [(r["step"], k, v) for r in rows for k, v in r.items() if v != "" and not k.startswith("time/")]


# Slow (3 processes, about 25 s): the default tier's kill-and-resume runs of tests/test_resume.py
# compare two processes of one seed the same way, metric by metric, row by row, sample by sample.
@pytest.mark.e2e
@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path, tiny_dir):
    extra = ["--data.task", "tests.helpers.TextParity", "--export_hf", "false", "--trainer.val_check_interval", "2"]
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        args = fit_args(tiny_dir, tmp_path, name, "credit/contrastive.yaml", steps=4, extra=extra)
        proc = run_cli(["fit", *args, "--seed_everything", str(seed)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = tmp_path / name / "v"
        runs[name] = (logged(run), json.loads((run / "summary.json").read_text()), (run / "samples" / "final.jsonl"))
    (la, sa, fa), (lb, sb, fb), (lc, _, _) = runs["a"], runs["b"], runs["c"]
    assert len(la) > 50 and {m for _, m, _ in la} >= {"train/reward_mean", "train/loss", "train/grad_norm", "val/acc"}
    assert la == lb, next((x, y) for x, y in zip(la, lb) if x != y)
    assert sa["final"] == sb["final"] and sa["base"] == sb["base"]
    assert fa.read_text() == fb.read_text()  # every evaluation sample, word for word
    assert [x for x in la if x[1].startswith("train/")] != [x for x in lc if x[1].startswith("train/")]

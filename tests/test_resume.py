"""A run killed after a checkpoint and resumed continues exactly: every metric of every step
equals the uninterrupted run's (one thread, same machine)."""

import csv

import pytest

from tests.helpers import fit_args, run_cli

STEPS, KILL_AT = 8, 6  # checkpoints every 3 steps: the kill comes after step 6's


def metrics(run_dir):
    """``{step: {metric: value}}`` of the training metrics (times left out); a metric logged twice
    for one step fails."""
    out = {}
    for row in csv.DictReader(open(run_dir / "metrics.csv")):
        kept = {k: v for k, v in row.items() if v != "" and k.startswith(("train/", "credit/"))}
        step = out.setdefault(row["step"], {})
        assert not set(kept) & set(step), f"step {row['step']}: {sorted(set(kept) & set(step))} logged twice"
        step.update(kept)
    return {k: v for k, v in out.items() if v}


@pytest.mark.parametrize(
    "overlays, extra",
    [
        ((), []),
        pytest.param(("credit/contrastive.yaml",), ["--model.teacher_weights", "EMA"], marks=pytest.mark.slow),
    ],
    ids=["grpo", "cepo-ema"],
)
def test_killed_run_resumes_exactly(tmp_path, tiny_dir, overlays, extra, monkeypatch):
    common = [
        "--checkpoint.every_n_train_steps",
        "3",
        "--data.task",
        "tests.helpers.TextParity",
        "--export_hf",
        "false",
    ]
    common += ["--trainer.val_check_interval", "4", *extra]

    def args(name, *more):
        return ["fit", *fit_args(tiny_dir, tmp_path, name, *overlays, steps=STEPS, extra=[*common, *more])]

    whole = run_cli(args("whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    monkeypatch.setenv("CEPO_TEST_KILL_AT", str(KILL_AT))
    killed = run_cli(args("cut", "--trainer.callbacks", "tests.helpers.KillAt"))
    assert killed.returncode != 0  # killed
    monkeypatch.delenv("CEPO_TEST_KILL_AT")
    ckpt = tmp_path / "cut" / "v" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        ["fit", *fit_args(tiny_dir, tmp_path, "cut", *overlays, steps=STEPS, extra=common), "--ckpt_path", str(ckpt)]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = metrics(tmp_path / "whole" / "v"), metrics(tmp_path / "cut" / "v")
    assert sorted(a, key=int) == sorted(b, key=int) and len(a) == STEPS  # every step once, none missing
    for step in sorted(a, key=int):
        assert a[step] == b[step], (
            step,
            {k: (a[step].get(k), b[step].get(k)) for k in a[step] if a[step].get(k) != b[step].get(k)},
        )

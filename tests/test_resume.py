"""A run killed after a checkpoint and resumed continues exactly: every metric of every step
equals the uninterrupted run's (one thread, same machine); with dynamic sampling too (its refill
prompts come from the DataModule's prompt stream, whose position is checkpointed)."""

import csv
import json
import os
import time

import pytest

from tests.helpers import fit_args, run_cli

EMA = ["--model.teacher_weights", "EMA"]
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
    "overlays, extra, kill",
    [
        ((), [], "SIGKILL"),
        ((), [], "SIGTERM"),
        (("sampling/dapo.yaml",), [], "SIGKILL"),
        pytest.param(
            ("credit/contrastive.yaml",), ["--model.teacher_weights", "EMA"], "SIGKILL", marks=pytest.mark.slow
        ),
        pytest.param(
            ("credit/contrastive.yaml",), ["--model.teacher_weights", "EMA"], "SIGTERM", marks=pytest.mark.slow
        ),
    ],
    ids=["grpo-sigkill", "grpo-sigterm", "grpo-dapo-sigkill", "cepo-ema-sigkill", "cepo-ema-sigterm"],
)
def test_killed_run_resumes_exactly(tmp_path, tiny_dir, overlays, extra, kill, monkeypatch):
    """SIGKILL: the run dies, its last checkpoint (step 6) is the resume point. SIGTERM: it saves
    last.ckpt after the step in progress (7) and exits with 0."""
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
    monkeypatch.setenv("CEPO_TEST_KILL", kill)
    killed = run_cli(args("cut", "--trainer.callbacks", "tests.helpers.KillAt"))
    if kill == "SIGKILL":
        assert killed.returncode != 0
    else:
        assert killed.returncode == 0 and "stopped on SIGTERM" in killed.stderr, killed.stderr[-2000:]
    monkeypatch.delenv("CEPO_TEST_KILL_AT")
    # SIGKILL resumes from the file, SIGTERM by `--ckpt_path last` (the run's newest checkpoint)
    ckpt = tmp_path / "cut" / "v" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        [
            "fit",
            *fit_args(tiny_dir, tmp_path, "cut", *overlays, steps=STEPS, extra=common),
            "--ckpt_path",
            str(ckpt) if kill == "SIGKILL" else "last",
        ]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if kill == "SIGTERM":
        assert f"--ckpt_path last: {ckpt}" in resumed.stdout
    summaries = [json.loads((tmp_path / name / "v" / "summary.json").read_text()) for name in ("whole", "cut")]
    assert summaries[1]["base"] == summaries[0]["base"] is not None  # the base evaluation survives the resume
    assert summaries[1]["final"] == summaries[0]["final"]
    a, b = metrics(tmp_path / "whole" / "v"), metrics(tmp_path / "cut" / "v")
    assert sorted(a, key=int) == sorted(b, key=int) and len(a) == STEPS  # every step once, none missing
    for step in sorted(a, key=int):
        assert a[step] == b[step], (
            step,
            {k: (a[step].get(k), b[step].get(k)) for k in a[step] if a[step].get(k) != b[step].get(k)},
        )


def test_a_checkpoint_killed_while_saving_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from lightning.fabric.plugins.io import torch_io

    from cepo.callbacks import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 6}, path)

    def dies_midway(checkpoint, filepath):
        with open(filepath, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(torch_io, "_atomic_save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 7}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 6


def test_ckpt_path_last_finds_the_newest_checkpoint(tmp_path):
    """Of one run version when given, else of every run under the run name; None when there is none."""
    from cepo.cli import last_checkpoint

    def ckpt(version, name, age):
        path = tmp_path / version / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
        return path

    assert last_checkpoint(tmp_path) is None
    old_last = ckpt("20261130-090000", "last.ckpt", age=3600)
    ckpt("20261130-090000", "step=3.ckpt", age=3700)
    (tmp_path / "20261130-090000" / "checkpoints" / "last.ckpt.tmp").write_bytes(b"half")  # a torn save
    new_step = ckpt("20261201-100000", "step=6.ckpt", age=60)
    new_last = ckpt("20261201-100000", "last.ckpt", age=60)  # same time as step=6: last wins
    assert last_checkpoint(tmp_path) == new_last
    assert last_checkpoint(tmp_path, "20261130-090000") == old_last
    assert last_checkpoint(tmp_path, "missing") is None
    new_last.unlink()
    assert last_checkpoint(tmp_path) == new_step


def test_resuming_a_finished_run_keeps_its_metrics(tmp_path, tiny_dir):
    """A requeued job may resume a run whose last checkpoint is at max_steps: nothing trains, and
    metrics.csv must still hold every step (the rows come back before training would start)."""
    extra = ["--checkpoint.every_n_train_steps", "1", "--data.task", "tests.helpers.TextParity", "--export_hf", "false"]
    args = ["fit", *fit_args(tiny_dir, tmp_path, "done", steps=2, extra=[*extra, "--report_base", "false"])]
    assert run_cli(args).returncode == 0
    before = metrics(tmp_path / "done" / "v")
    again = run_cli([*args, "--ckpt_path", "last"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(before) == ["0", "1"] and metrics(tmp_path / "done" / "v") == before

"""A run killed after a checkpoint and resumed continues exactly: every metric of every step,
every validation row and sample file equals the uninterrupted run's (one thread, same machine),
also when the checkpoint was written before the validation of its step (the default's cadence);
with dynamic sampling too (its refill prompts come from the DataModule's prompt stream, whose
position is checkpointed), and through a sweep's re-run."""

import csv
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.helpers import fit_args, run_cli

EMA = ["--model.teacher_weights", "EMA"]
CEPO = ("credit/contrastive.yaml",)
# The default's cadence (checkpoints every 50 steps, validations every 100) scaled down: every
# validation falls on a checkpoint step, and the checkpoint is written before the validation.
STEPS, CKPT_EVERY, VAL_EVERY = 6, 2, 4
COMMON = [
    "--checkpoint.every_n_train_steps",
    str(CKPT_EVERY),
    "--trainer.val_check_interval",
    str(VAL_EVERY),
    "--data.task",
    "tests.helpers.TextParity",
    "--export_hf",
    "false",
]


def metrics(run_dir, prefixes=("train/", "credit/")):
    """``{step: {metric: value}}`` of the metrics named ``prefixes*`` (times left out); a metric
    logged twice for one step fails."""
    out = {}
    for row in csv.DictReader(open(run_dir / "metrics.csv")):
        kept = {k: v for k, v in row.items() if v != "" and k.startswith(prefixes)}
        step = out.setdefault(row["step"], {})
        assert not set(kept) & set(step), f"step {row['step']}: {sorted(set(kept) & set(step))} logged twice"
        step.update(kept)
    return {k: v for k, v in out.items() if v}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a, key=int) == sorted(b, key=int), (sorted(a, key=int), sorted(b, key=int))
    for step in sorted(a, key=int):
        assert a[step] == b[step], (
            step,
            {k: (a[step].get(k), b[step].get(k)) for k in a[step] if a[step].get(k) != b[step].get(k)},
        )


# (overlays, extra, signal, where, at): the process is killed when rollout step `at` + 1 is about
# to start (`train`) or when the validation after step `at` starts (`validation`: its step's
# checkpoint is written, the validation has not run); SIGTERM at the start of step `at` + 1 saves
# after that step.
KILLS = [
    pytest.param((), [], "SIGKILL", "validation", 4, id="grpo-sigkill-in-validation"),
    pytest.param((), [], "SIGKILL", "train", 4, id="grpo-sigkill-after-validation", marks=pytest.mark.slow),
    pytest.param((), [], "SIGTERM", "train", 3, id="grpo-sigterm-validation-due"),
    pytest.param(CEPO, [], "SIGKILL", "validation", 4, id="cepo-sigkill-in-validation", marks=pytest.mark.slow),
    pytest.param(("sampling/dapo.yaml",), [], "SIGKILL", "train", 4, id="grpo-dapo-sigkill", marks=pytest.mark.slow),
    pytest.param(CEPO, EMA, "SIGKILL", "train", 4, id="cepo-ema-sigkill", marks=pytest.mark.slow),
    pytest.param(CEPO, EMA, "SIGTERM", "train", 3, id="cepo-ema-sigterm", marks=pytest.mark.slow),
    pytest.param(CEPO, [], "SIGTERM", "train", 1, id="cepo-sigterm-no-validation-due", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_dir):
    """``run(overlays, args)``: the uninterrupted run of one config, run once in this module and
    shared by every kill of that config (the run does not depend on where the others are killed)."""
    done = {}

    def run(overlays, args):
        key = (tuple(overlays), tuple(args))
        if key not in done:
            root = tmp_path_factory.mktemp("whole")
            whole = run_cli(["fit", *fit_args(tiny_dir, root, "whole", *overlays, steps=STEPS, extra=args)])
            assert whole.returncode == 0, whole.stderr[-3000:]
            done[key] = root / "whole" / "v"
        return done[key]

    return run


@pytest.mark.e2e
@pytest.mark.parametrize("overlays, extra, kill, where, at", KILLS)
def test_killed_run_resumes_exactly(tmp_path, tiny_dir, overlays, extra, kill, where, at, monkeypatch, uninterrupted):
    """A run killed after any checkpoint, including one written before the validation of its step,
    resumes with every training metric, validation row and sample file equal to the uninterrupted
    run's, and with every validation that was due run exactly once. SIGKILL resumes from the
    file; SIGTERM saves after the step in progress, exits 0 without validating, and resumes by
    ``--ckpt_path last``, which then runs the validation that was due."""
    common = [*COMMON, *extra]

    def args(name, *more):
        return ["fit", *fit_args(tiny_dir, tmp_path, name, *overlays, steps=STEPS, extra=[*common, *more])]

    whole_dir = uninterrupted(overlays, common)
    monkeypatch.setenv("CEPO_TEST_KILL_AT", str(at))
    monkeypatch.setenv("CEPO_TEST_KILL_IN", where)
    monkeypatch.setenv("CEPO_TEST_KILL", kill)
    killed = run_cli(args("cut", "--trainer.callbacks", "tests.helpers.KillAt"))
    cut = tmp_path / "cut" / "v"
    if kill == "SIGKILL":
        assert killed.returncode != 0
    else:
        assert killed.returncode == 0 and "stopped on SIGTERM" in killed.stderr, killed.stderr[-2000:]
        # saved after step at + 1 and left without running a validation, due or not
        assert not any(int(s) > 0 for s in metrics(cut, ("val/",))), metrics(cut, ("val/",))
        assert sorted(p.name for p in (cut / "samples").glob("step_*")) == []
    monkeypatch.delenv("CEPO_TEST_KILL_AT")
    ckpt = cut / "checkpoints" / "last.ckpt"
    resumed = run_cli(args("cut", "--ckpt_path", str(ckpt) if kill == "SIGKILL" else "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if kill == "SIGTERM":
        assert f"--ckpt_path last: {ckpt}" in resumed.stdout
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole_dir, cut)]
    assert summaries[1]["base"] == summaries[0]["base"] is not None  # the base evaluation survives the resume
    assert summaries[1]["final"] == summaries[0]["final"]
    a, b = metrics(whole_dir), metrics(cut)
    assert len(a) == STEPS  # every step once, none missing
    assert_same(a, b)
    # validations: the base (0), the check after step 4, the final score (6), each once
    va, vb = metrics(whole_dir, ("val/",)), metrics(cut, ("val/",))
    assert sorted(map(int, va)) == [0, VAL_EVERY, STEPS]
    assert_same(va, vb)
    for name in ("base.jsonl", f"step_{VAL_EVERY:05d}.jsonl", "final.jsonl"):
        assert (cut / "samples" / name).read_text() == (whole_dir / "samples" / name).read_text(), name
    assert (whole_dir / "samples" / f"step_{VAL_EVERY:05d}.jsonl").stat().st_size > 0


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


@pytest.mark.e2e
def test_resuming_a_finished_run_keeps_its_metrics(tmp_path, tiny_dir, uninterrupted, capsys):
    """A requeued job may resume a run whose last checkpoint is at max_steps: nothing trains, and
    metrics.csv must still hold every step (the rows come back before training would start).
    The finished run is a copy of the module's uninterrupted one, resumed in this process."""
    from cepo.cli import cli_main

    done = tmp_path / "done" / "v"
    shutil.copytree(uninterrupted((), COMMON), done)
    before = metrics(done)
    capsys.readouterr()
    cli_main(["fit", *fit_args(tiny_dir, tmp_path, "done", steps=STEPS, extra=[*COMMON, "--ckpt_path", "last"])])
    assert f"--ckpt_path last: {done / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out  # at max_steps
    assert sorted(before, key=int) == [str(s) for s in range(STEPS)] and metrics(done) == before


# Slow (one more process, about 10 s): tests/test_datamodule.py checks the isolation in-process
# (test_an_evaluation_leaves_training_draws_alone), and the default tier's kill in a validation
# resumes to the same metrics.
@pytest.mark.e2e
@pytest.mark.slow
def test_evaluations_never_change_what_training_draws(tmp_path, tiny_dir, uninterrupted):
    """A validation after step 4 of 6 (the module's uninterrupted run), or none before the final
    score: the training metrics of every step are the same (evaluations draw from their own engine
    counter and a forked random stream)."""
    never = [*COMMON]
    never[never.index("--trainer.val_check_interval") + 1] = "100"
    out = run_cli(["fit", *fit_args(tiny_dir, tmp_path, "never", steps=STEPS, extra=never)])
    assert out.returncode == 0, out.stderr[-3000:]
    often = uninterrupted((), COMMON)
    assert sorted(map(int, metrics(often, ("val/",)))) == [0, VAL_EVERY, STEPS]
    assert sorted(map(int, metrics(tmp_path / "never" / "v", ("val/",)))) == [0, STEPS]
    assert len(metrics(often)) == STEPS
    assert_same(metrics(often), metrics(tmp_path / "never" / "v"))


@pytest.mark.e2e
@pytest.mark.slow
def test_a_sweep_point_killed_in_a_validation_resumes_exactly_on_the_rerun(tmp_path, tiny_dir, monkeypatch):
    """A sweep point killed when the validation of its step-4 checkpoint starts is resumed by the
    sweep's re-run (``--ckpt_path last``): its training metrics, validation rows and sample files
    equal those of the same point in an uninterrupted sweep."""
    import sys

    import yaml

    from tests.helpers import ROOT

    fixed = {
        "trainer.max_steps": STEPS,
        "checkpoint.every_n_train_steps": CKPT_EVERY,
        "trainer.val_check_interval": VAL_EVERY,
        "data.prompts_per_step": 2,
        "data.group_size": 4,
        "data.eval_size": 6,
        "data.eval_k": 2,
        "export_hf": False,
        "model.model_path": str(tiny_dir),
        "data.task": "tests.helpers.TextParity",
        "trainer.callbacks": ["tests.helpers.KillAt"],  # kills only while CEPO_TEST_KILL_AT is set
    }
    grid = tmp_path / "g.yaml"
    spec = {"name": "p", "base": ["configs/default.yaml"], "fixed": fixed, "grid": {"seed_everything": [0]}}
    grid.write_text(yaml.safe_dump(spec))

    def sweep(out):
        cmd = [sys.executable, "-m", "cepo", "sweep", str(grid), "--out", str(out)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    assert sweep(tmp_path / "whole").returncode == 0
    monkeypatch.setenv("CEPO_TEST_KILL_AT", str(VAL_EVERY))
    monkeypatch.setenv("CEPO_TEST_KILL_IN", "validation")
    sweep(tmp_path / "cut")  # the point dies: reported as failed
    monkeypatch.delenv("CEPO_TEST_KILL_AT")
    rerun = sweep(tmp_path / "cut")
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    whole, cut = (tmp_path / name / "p" / "seed=0" for name in ("whole", "cut"))
    assert "--ckpt_path last" in (cut / "stdout.log").read_text()
    assert len(metrics(whole)) == STEPS
    assert_same(metrics(whole), metrics(cut))
    assert_same(metrics(whole, ("val/",)), metrics(cut, ("val/",)))
    for name in ("base.jsonl", f"step_{VAL_EVERY:05d}.jsonl", "final.jsonl"):
        assert (cut / "samples" / name).read_text() == (whole / "samples" / name).read_text(), name

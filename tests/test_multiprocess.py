"""Every credit rule and objective on two gloo processes, end to end (docs/scaling.md).

Each case runs ``cepo fit`` for 4 rollout steps on DDP or FSDP2 with a task on which rank 1 holds
only tied groups (no loss-carrying row, no evidence computed) while rank 0 trains: the ranks then
skip different passes, and any collective that depends on local data pairs with a different one.
A tight ``--dist_timeout`` turns such a hang into a failure within a minute. Before the fix, every
rule that reads evidence stopped at its second step (the token-weight page asked ``trainer.log_dir``,
a broadcast, on rank 0 only), and the Base/EMA teachers could not copy an FSDP policy.
"""

import csv
import json
import math
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, fit_args, run_cli

CONFIGS = [f"credit/{p.stem}.yaml" for p in sorted((ROOT / "configs" / "credit").glob("*.yaml"))]
CONFIGS += [f"method/{p.stem}.yaml" for p in sorted((ROOT / "configs" / "method").glob("*.yaml"))]
STEPS = 4
COMMON = [
    "--data.task",
    "tests.helpers.TiedOnRankOne",
    "--trainer.val_check_interval",
    "2",
    "--report_base",
    "false",
    "--export_hf",
    "false",
    "--dist_timeout",
    "60",
]


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]


def every_step_keys(run_dir: Path) -> set[str]:
    """The training metrics logged at every rollout step."""
    steps: dict[str, set[str]] = {}
    for r in rows(run_dir):
        steps.setdefault(r["step"], set()).update(k for k in r if k.startswith("train/"))
    steps = {s: keys for s, keys in steps.items() if keys}
    return set.intersection(*steps.values()) if steps else set()


def run(tmp_path, tiny_dir, name, *overlays, extra=(), timeout=300):
    args = fit_args(tiny_dir, tmp_path, name, *overlays, steps=STEPS, extra=[*COMMON, *extra])
    return run_cli(["fit", *args], timeout), tmp_path / name / "v"


# All slow (about 100 s each on the shared 2-core machine): the default suite runs two processes
# through tests/test_distributed.py (a DDP fit, updates equal to one process under DDP and FSDP).
CASES = [
    pytest.param(config, strategy, [], marks=pytest.mark.slow) for strategy in ("ddp", "fsdp") for config in CONFIGS
]
CASES += [  # the teacher and reference copies of a sharded policy
    pytest.param("credit/contrastive.yaml", "fsdp", ["--model.teacher_weights", "Base"], marks=pytest.mark.slow),
    pytest.param("credit/uniform.yaml", "fsdp", ["--model.kl_coef", "0.1"], marks=pytest.mark.slow),
    # a Live teacher runs the sharded policy, and only rank 0 has rows with another success
    pytest.param(
        "method/sdpo.yaml",
        "fsdp",
        ["--model.objective.init_args.teacher_weights", "cepo.teacher.Live"],
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize("config, strategy, extra", CASES)
def test_every_method_runs_on_two_processes(tmp_path, tiny_dir, config, strategy, extra):
    """The run finishes its 4 steps and both validations; every training metric the one-process
    run logs at every step, the two-process run logs at every step too, with finite values."""
    start = time.monotonic()
    two, two_dir = run(tmp_path, tiny_dir, "two", f"scale/cpu_{strategy}.yaml", config, extra=extra)
    assert two.returncode == 0, two.stderr[-3000:]
    assert time.monotonic() - start < 240
    summary = json.loads((two_dir / "summary.json").read_text())
    assert summary["rl_steps"] == STEPS and "val/acc" in summary["final"]
    val_steps = sorted({int(r["step"]) for r in rows(two_dir) if "val/acc" in r})
    assert val_steps == [2, 4], val_steps  # the checks after steps 2 and 4 (the final score at 4 too)
    one, one_dir = run(tmp_path, tiny_dir, "one", config, extra=extra)
    assert one.returncode == 0, one.stderr[-3000:]
    expected = every_step_keys(one_dir)
    assert {"train/loss", "train/reward_mean"} <= expected
    assert expected <= every_step_keys(two_dir), sorted(expected - every_step_keys(two_dir))
    for r in rows(two_dir):
        for k in expected & set(r):
            assert math.isfinite(float(r[k])), (r["step"], k, r[k])


# Slow (about 40 s): the default tier checks the line in-process (the last test here) and runs two
# ranks in tests/test_distributed.py.
@pytest.mark.e2e
@pytest.mark.slow
def test_a_rank_that_never_arrives_ends_in_one_line_within_the_timeout(tmp_path, tiny_dir):
    """Rank 0 enters a collective that rank 1 skips (rank 1 then stays busy): with
    ``--dist_timeout 10`` the run stops with one line naming the stage and exit code 2, and the
    other process is stopped too, instead of waiting 30 minutes. Starting the processes is not bound
    by it (a second rank that started more than 10 s after the first failed the run here once)."""
    extra = ["--dist_timeout", "10", "--trainer.callbacks+=tests.helpers.RankOneNeverArrives"]
    start = time.monotonic()
    out, _ = run(tmp_path, tiny_dir, "hang", "scale/cpu_ddp.yaml", "credit/contrastive.yaml", extra=extra, timeout=180)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("cepo: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "waited more than 10 s (--dist_timeout)" in errors[0]
    assert "'rollout step 2 > a collective rank 1 skips (test)'" in errors[0], errors[0]
    assert elapsed < 130, elapsed  # start-up, two steps and the 10 s timeout; rank 1 sleeps 600 s


@pytest.mark.e2e
@pytest.mark.slow
def test_a_short_timeout_does_not_bound_the_start(tmp_path, tiny_dir):
    """Rank 1 arrives 15 s late (it sleeps before loading the policy, as a loaded machine once made
    it): with ``--dist_timeout 10`` the run still trains, since joining and loading wait up to the
    default timeout and the 10 s bound the collectives from the start of training on."""
    extra = ["--dist_timeout", "10", "--trainer.callbacks+=tests.helpers.RankOneStartsLate"]
    out, run_dir = run(tmp_path, tiny_dir, "late", "scale/cpu_ddp.yaml", "credit/uniform.yaml", extra=extra)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["rl_steps"] == STEPS


@pytest.mark.e2e
@pytest.mark.slow
def test_mismatch_stop_stops_every_process_before_the_update(tmp_path, tiny_dir):
    """Only rank 1 sees an engine/trainer gap above ``model.mismatch_stop`` (at step 2): the
    decision is all-reduced, so neither process applies that update and both stop together."""
    extra = ["--model.mismatch_stop", "0.02", "--trainer.callbacks+=tests.helpers.GapOnRankOne"]
    extra += ["--data.task", "tests.helpers.TextParity"]  # rank 1 trains rows, so it measures a gap
    out, run_dir = run(tmp_path, tiny_dir, "gap", "scale/cpu_ddp.yaml", extra=extra)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mismatch_stop" in out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    # step 1's update applied on both; step 2's on neither (rank 0 alone would have applied it)
    assert summary["rl_steps"] == 2 and summary["optimizer_steps"] == 1, summary


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("config", ["credit/uniform.yaml", "credit/contrastive.yaml"], ids=["grpo", "cepo"])
def test_two_process_run_killed_in_a_validation_resumes_exactly(tmp_path, tiny_dir, config, monkeypatch):
    """Both processes are killed when the validation after step 4 starts (step 4's checkpoint is
    written, the validation has not run); resumed from that checkpoint, the run's training
    metrics, validation rows and every process's sample files equal the uninterrupted run's."""
    from tests.test_resume import assert_same, metrics

    extra = ["--data.task", "tests.helpers.TextParity", "--checkpoint.every_n_train_steps", "2"]
    extra += ["--trainer.val_check_interval", "4", "--export_hf", "false", "--dist_timeout", "60"]

    def fit(name, *more):
        args = fit_args(tiny_dir, tmp_path, name, "scale/cpu_ddp.yaml", config, steps=6, extra=[*extra, *more])
        return run_cli(["fit", *args], timeout=300)

    whole = fit("whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    monkeypatch.setenv("CEPO_TEST_KILL_AT", "4")
    monkeypatch.setenv("CEPO_TEST_KILL_IN", "validation")
    assert fit("cut", "--trainer.callbacks", "tests.helpers.KillAt").returncode != 0
    monkeypatch.delenv("CEPO_TEST_KILL_AT")
    cut = tmp_path / "cut" / "v"
    resumed = fit("cut", "--ckpt_path", str(cut / "checkpoints" / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole_dir = tmp_path / "whole" / "v"
    assert len(metrics(whole_dir)) == 6
    assert_same(metrics(whole_dir), metrics(cut))
    assert sorted(map(int, metrics(whole_dir, ("val/",)))) == [0, 4, 6]
    assert_same(metrics(whole_dir, ("val/",)), metrics(cut, ("val/",)))
    files = sorted(p.name for p in (whole_dir / "samples").iterdir())
    assert "step_00004.rank1.jsonl" in files and files == sorted(p.name for p in (cut / "samples").iterdir())
    for name in files:
        assert (cut / "samples" / name).read_text() == (whole_dir / "samples" / name).read_text(), name


def test_the_failure_line_names_the_stage_of_distributed_errors_only(monkeypatch):
    """A torch distributed error raised inside nested stages gives the line with the innermost
    stage path and the timeout; an ordinary RuntimeError that mentions a time-out does not."""
    import torch.distributed as dist

    from cepo import distributed

    monkeypatch.setattr(distributed, "timeout_s", 12.0)
    monkeypatch.setattr(distributed, "startup_s", None)  # in-process fits of other tests leave theirs
    monkeypatch.setattr(distributed, "_stages", [])  # in-process fits of other tests leave their last stage
    assert distributed.failure(RuntimeError("operation timed out")) is None  # no process group: not a collective
    with pytest.raises(dist.DistError) as info:
        with distributed.stage("rollout step 3"), distributed.stage("evidence"):
            raise dist.DistError("[gloo] Timed out waiting 12000ms for recv operation to complete")
    assert distributed.current_stage() == "start-up"  # the stages are left on the way out
    line = distributed.failure(info.value)
    assert "waited more than 12 s (--dist_timeout)" in line and "at stage 'rollout step 3 > evidence'" in line
    lost = distributed.failure(dist.DistError("Connection reset by peer"))
    assert lost.startswith("a process lost the other processes at stage 'start-up'")
    # before the first hook gave the collectives --dist_timeout, start-up's longer limit was in force
    monkeypatch.setattr(distributed, "startup_s", 300.0)
    monkeypatch.setattr(distributed, "_applied", False)
    early = distributed.failure(info.value)
    assert "waited more than 300 s (the start-up timeout: the longer of --dist_timeout and its default)" in early
    monkeypatch.setattr(distributed, "_applied", True)
    assert "waited more than 12 s (--dist_timeout)" in distributed.failure(info.value)

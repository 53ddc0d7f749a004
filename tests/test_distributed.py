"""DDP on CPU (gloo, 2 processes): the GPU code path that can run here."""

import json

import pytest

from tests.helpers import fit_args, run_cli


@pytest.mark.parametrize("skewed", [False, True], ids=["grpo", "uneven-rows"])
def test_fit_ddp_gloo_two_processes(tmp_path, tiny_dir, skewed):
    """With rows appended on one rank only, the ranks run different numbers of micro-batches:
    zero-loss padding keeps the gradient all-reduces matched instead of deadlocking."""
    extra = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--export_hf", "false"]
    if skewed:
        extra += [
            "--model.objective",
            "tests.helpers.SkewedCIPO",
            "--model.objective.init_args.max_share",
            "0.5",
            "--model.micro_batch_size",
            "2",
            "--model.num_minibatches",
            "2",
            "--data.task",
            "tests.helpers.AllWrong",
        ]
    # with 2 mini-batches per rollout step, 4 optimizer updates are 2 rollout steps
    steps = 4 if skewed else 2
    out = run_cli(["fit", *fit_args(tiny_dir, tmp_path, "ddp", steps=steps, extra=extra)], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "v" / "summary.json").read_text())
    updates = 2 if skewed else 1
    assert summary["rl_steps"] == 2 and summary["optimizer_steps"] == 2 * updates
    assert "val/acc" in summary["final"]
    if skewed:  # rank 0 logs: it appended one correction group per step
        rows = (tmp_path / "ddp" / "v" / "metrics.csv").read_text().splitlines()
        col = rows[0].split(",").index("train/cipo/attempts")
        assert [r.split(",")[col] for r in rows[1:] if r.split(",")[col]] == ["1.0", "1.0"]

"""Composable rewards: components by hand, the weighted sum, user functions, and a YAML run."""

import csv

import pytest

from cepo.cli import cli_main
from cepo.rewards import Accuracy, Format, Function, OverlongPenalty, RewardInputs, check_names, combine
from cepo.tasks import JsonlTask
from tests.helpers import ROOT, fit_args


def inputs(responses, answers, lengths=None, truncated=None, max_new_tokens=10):
    n = len(responses)
    return RewardInputs(
        ["q"] * n,
        responses,
        answers,
        lengths or [1] * n,
        truncated or [False] * n,
        max_new_tokens,
        JsonlTask(verifier="exact"),
    )


def test_paper_reward_by_hand():
    batch = inputs(["so \\boxed{4}", "it is 4", "\\boxed{5}", "nothing"], ["4"] * 4)
    totals, parts = combine([Accuracy(0.9), Format(0.1)], batch)
    assert parts == {"accuracy": [1.0, 1.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0, 0.0]}
    assert totals == pytest.approx([1.0, 0.9, 0.1, 0.0])


def test_overlong_penalty_by_hand():
    # limit 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 when truncated
    batch = inputs(["a"] * 5, ["x"] * 5, lengths=[3, 6, 7, 9, 10], truncated=[False, False, False, False, True])
    assert OverlongPenalty(buffer=4).score(batch) == pytest.approx([0.0, 0.0, -0.25, -0.75, -1.0])


def test_user_function_from_a_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def score(prompts, responses, answers):\n    return [len(r) for r in responses]\n")
    fn = Function(f"{path}:score", weight=0.5)
    assert fn.name == "score" and fn.score(inputs(["ab", ""], ["1", "1"])) == [2.0, 0.0]
    path.write_text("def score(prompts, responses, answers):\n    return [1.0]\n")
    with pytest.raises(ValueError, match="returned 1 values for 2 responses"):
        Function(f"{path}:score").score(inputs(["ab", ""], ["1", "1"]))
    with pytest.raises(FileNotFoundError, match="nope.py"):
        Function(f"{tmp_path}/nope.py:score")
    with pytest.raises(ValueError, match="not a callable"):
        Function("cepo.rewards.log")


def test_names_must_differ():
    with pytest.raises(ValueError, match="two components are named 'format'"):
        check_names([Format(), Format(0.5)])
    check_names([Format(), Format(0.5, name="format_strict")])


def test_custom_reward_runs_from_yaml(tmp_path, tiny_dir, monkeypatch):
    """configs/rewards/custom.yaml (a user function from a file) trains; each component is logged
    per step and the logged reward is their weighted sum."""
    monkeypatch.chdir(ROOT)  # the config names experiments/rewards.py relative to the repository
    cli_main(["fit", *fit_args(tiny_dir, tmp_path, "rw", "rewards/custom.yaml", extra=["--export_hf", "false"])])
    rows = list(csv.DictReader(open(tmp_path / "rw" / "v" / "metrics.csv")))
    steps = [r for r in rows if r.get("train/reward/brevity")]
    assert len(steps) == 2
    for r in steps:
        total = float(r["train/reward/accuracy"]) + 0.1 * float(r["train/reward/brevity"])
        assert float(r["train/reward_mean"]) == pytest.approx(total, abs=1e-6)
        assert 0 < float(r["train/reward/brevity"]) <= 1

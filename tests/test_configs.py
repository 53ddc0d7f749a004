"""Every shipped YAML parses and instantiates through the real CLI; bad settings fail early."""

import json
from pathlib import Path

import pytest

from cepo.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.yaml")
OVERLAYS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "default.yaml")


def run_cli(tmp_path, *extra, subcommand="fit"):
    return cli_main([subcommand, "--config", DEFAULT, *extra, "--run_root", str(tmp_path)], run=False)


def test_default_instantiates(tmp_path):
    cli = run_cli(tmp_path)
    assert type(cli.model.credit).__name__ == "Uniform"
    assert cli.datamodule.group_size == 8
    assert cli.model.policy is None  # heavy objects wait for configure_model


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_composes_on_default(tmp_path, overlay):
    cli = run_cli(tmp_path, "--config", str(overlay))
    assert cli.model is not None and cli.datamodule is not None


def test_short_names_on_the_command_line(tmp_path):
    cli = run_cli(tmp_path, "--model.credit", "Contrastive", "--model.credit.clip", "0.2")
    assert type(cli.model.credit).__name__ == "Contrastive"
    assert cli.model.credit.clip == 0.2


def test_validate_subcommand_parses(tmp_path):
    cli = run_cli(tmp_path, subcommand="validate")
    assert cli.datamodule.eval_k == 4


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--data.group_size", "1", "data.group_size"),
        ("--model.eps_low", "1.5", "model.eps_low"),
        ("--model.eps_low", "0", "model.eps_low"),
        ("--model.optimizer.lr", "-0.1", "model.optimizer"),
        ("--model.credit", "Contrastive", None),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, flag, value, message, capsys):
    if message is None:  # a valid control case
        run_cli(tmp_path, flag, value)
        return
    with pytest.raises((SystemExit, ValueError)) as err:
        run_cli(tmp_path, flag, value)
    text = str(err.value) + capsys.readouterr().err
    assert message in text


def test_dataset_row_without_answer_names_file_and_line(tmp_path):
    from cepo.tasks import JsonlTask

    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n")
    task = JsonlTask(train=str(f), val=str(f))
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: row has no answer"):
        task.validate()
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"question": "x", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        JsonlTask(train=str(bad_json)).validate()


def test_objective_short_names_on_the_command_line(tmp_path):
    cli = run_cli(tmp_path, "--model.objective", "SDPO", "--model.objective.top_k", "7")
    assert type(cli.model.objective).__name__ == "SDPO" and cli.model.objective.top_k == 7
    assert type(run_cli(tmp_path).model.objective).__name__ == "Objective"  # the surrogate alone


def test_bad_objective_setting_names_the_field(tmp_path, capsys):
    cipo = str(ROOT / "configs" / "method" / "cipo.yaml")
    with pytest.raises((SystemExit, ValueError)) as err:
        run_cli(tmp_path, "--config", cipo, "--model.objective.init_args.max_share", "1.5")
    assert "cipo.max_share" in str(err.value) + capsys.readouterr().err

"""Every shipped YAML parses and instantiates through the real CLI; bad settings fail early."""

import importlib
import json

import pytest
import yaml

from cepo.cli import cli_main
from tests.helpers import DEFAULT, ROOT

OVERLAYS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "default.yaml")


def run_cli(tmp_path, *extra, subcommand="fit"):
    return cli_main([subcommand, "--config", DEFAULT, *extra, "--run_root", str(tmp_path)], run=False)


def test_default_instantiates(tmp_path):
    cli = run_cli(tmp_path)
    assert type(cli.model.credit).__name__ == "Uniform"
    assert cli.datamodule.group_size == 8
    assert cli.model.policy is None  # heavy objects wait for configure_model


def leaves(tree, prefix=()):
    """``(path, value)`` for every leaf a YAML mapping sets (lists are leaves)."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def at(node, path):
    """The value at ``path`` in a parsed config (nested Namespaces and dicts). A YAML file may
    leave out ``init_args`` (``model.teacher.template``): the parsed config has it."""
    for key in path:
        if isinstance(node, dict):
            node = node[key]
        elif hasattr(node, key) or not hasattr(node, "init_args"):
            node = getattr(node, key)
        else:
            node = getattr(node.init_args, key)
    return node


def resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def same(parsed, written) -> bool:
    if isinstance(written, list) and isinstance(parsed, list):  # e.g. data.rewards: a list of classes
        return len(parsed) == len(written) and all(same(p, w) for p, w in zip(parsed, written))
    if isinstance(written, dict) and "class_path" in written:
        args = written.get("init_args", {})
        if not hasattr(parsed, "class_path"):  # the instantiated object
            return type(parsed) is resolve(written["class_path"]) and all(
                same(getattr(parsed, k), v) for k, v in args.items()
            )
        return resolve(parsed.class_path) is resolve(written["class_path"]) and all(
            same(at(parsed.init_args, (k,)), v) for k, v in args.items()
        )
    if isinstance(written, float) or isinstance(parsed, float):
        return parsed == pytest.approx(written, rel=1e-12)
    return parsed == written


def instance_at(cli, path):
    """The instantiated object a config path sets, or None where it is not an attribute of the
    same name (``init_args`` is skipped; ``model.<key>`` falls back to the module's hparams)."""
    node = {"model": cli.model, "data": cli.datamodule}.get(path[0])
    for key in path[1:]:
        if node is None:
            return None
        if key == "init_args":
            continue
        if isinstance(node, dict):
            node = node.get(key)
        elif hasattr(node, key):
            node = getattr(node, key)
        elif node is cli.model and key in cli.model.hparams:
            node = cli.model.hparams[key]
        else:
            return None
    return node


def check_overlay_took_effect(cli, written):
    """Every value of ``written`` reached ``cli.config``; every class it names is the class of the
    instantiated object; scalars that are attributes of that object (or module hparams) hold it."""
    for path, value in written:
        name = ".".join(path)
        parsed = at(cli.config, path)
        if path[-1] == "class_path":
            assert resolve(parsed) is resolve(value), name
            if path[-2] in ("optimizer", "lr_scheduler"):
                continue  # factories (callables), built in configure_optimizers
            made = instance_at(cli, path[:-1])
            assert made is not None and type(made) is resolve(value), name
        else:
            assert same(parsed, value), (name, parsed, value)
            made = instance_at(cli, path)
            if made is not None and not callable(made):
                assert same(made, value), (name, made, value)


def changes(base, written) -> bool:
    """Whether ``written`` sets some value that ``base`` (a parsed config) does not hold."""
    for path, value in written:
        try:
            old = at(base, path)
        except (AttributeError, KeyError):
            return True
        if (resolve(old) is not resolve(value)) if path[-1] == "class_path" else not same(old, value):
            return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_composes_on_default(tmp_path, overlay):
    """The values an overlay sets reach the config and the instantiated objects."""
    cli = run_cli(tmp_path, "--config", str(overlay))
    assert cli.model is not None and cli.datamodule is not None
    written = list(leaves(yaml.safe_load(overlay.read_text())))
    assert written, overlay
    check_overlay_took_effect(cli, written)
    if changes(run_cli(tmp_path).config, written):
        return
    # The overlay restates the default (e.g. credit/uniform.yaml), so the check above could not see
    # it ignored: compose it after a sibling it overrides (e.g. credit/contrastive.yaml) instead.
    for sibling in sorted(p for p in overlay.parent.glob("*.yaml") if p != overlay):
        if changes(run_cli(tmp_path, "--config", str(sibling)).config, written):
            check_overlay_took_effect(run_cli(tmp_path, "--config", str(sibling), "--config", str(overlay)), written)
            return
    pytest.fail(f"{overlay.name} sets nothing that the default or a sibling config does not")


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

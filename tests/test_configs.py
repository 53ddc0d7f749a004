"""Every shipped YAML parses and instantiates through the real CLI; bad settings fail early."""

import importlib
import json

import pytest
import torch
import yaml

from cepo.cli import cli_main
from tests.helpers import DEFAULT, ROOT

# configs/logging/ appends to trainer.logger (``logger+``) and needs optional packages: tests/test_trackers.py
OVERLAYS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "default.yaml" and p.parent.name != "logging"
)


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
    same name (``init_args`` is skipped; ``model.<key>`` is the module's hparam where it is one)."""
    node = {"model": cli.model, "data": cli.datamodule, "trainer": cli.trainer}.get(path[0])
    for key in path[1:]:
        if node is None:
            return None
        if key == "init_args":
            continue
        if isinstance(node, dict):
            node = node.get(key)
        elif node is cli.model and key in cli.model.hparams:  # e.g. model.dtype (not the module's .dtype)
            node = cli.model.hparams[key]
        elif hasattr(node, key):
            node = getattr(node, key)
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
            if path[0] == "trainer" and not isinstance(made, (str, int, float)):
                continue  # e.g. trainer.accelerator: "gpu" becomes an Accelerator object
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


def on_this_machine(overlay) -> tuple[list[str], list]:
    """The flags that compose ``overlay`` here, and the leaves it sets that can be checked here. A GPU
    config (``trainer.accelerator: gpu``) on a machine without one is composed with
    ``--trainer.accelerator cpu`` after it: every other value (strategy, devices, nodes, precision,
    engine settings) is still parsed and instantiated, nothing is launched."""
    written = list(leaves(yaml.safe_load(overlay.read_text())))
    flags = ["--config", str(overlay)]
    if dict(written).get(("trainer", "accelerator")) == "gpu" and not torch.cuda.is_available():
        flags += ["--trainer.accelerator", "cpu"]
        written = [(path, value) for path, value in written if path != ("trainer", "accelerator")]
    return flags, written


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_composes_on_default(tmp_path, overlay):
    """The values an overlay sets reach the config and the instantiated objects."""
    flags, written = on_this_machine(overlay)
    cli = run_cli(tmp_path, *flags)
    assert cli.model is not None and cli.datamodule is not None
    assert written, overlay
    check_overlay_took_effect(cli, written)
    if changes(run_cli(tmp_path).config, written):
        return
    # The overlay restates the default (e.g. credit/uniform.yaml), so the check above could not see
    # it ignored: compose it after a sibling it overrides (e.g. credit/contrastive.yaml) instead.
    for sibling in sorted(p for p in overlay.parent.glob("*.yaml") if p != overlay):
        if changes(run_cli(tmp_path, *on_this_machine(sibling)[0]).config, written):
            check_overlay_took_effect(run_cli(tmp_path, *on_this_machine(sibling)[0], *flags), written)
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
        ("--data.group_size", "1", "data.group_size must be >= 2 (GRPO compares rollouts), got 1"),
        ("--model.eps_low", "1.5", "model.eps_low must be in (0, 1), got 1.5"),
        ("--model.eps_low", "0", "model.eps_low must be in (0, 1), got 0.0"),
        ("--model.optimizer.lr", "-0.1", "model.optimizer: Invalid learning rate: -0.1"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, flag, value, message):
    """Each bad value is refused while the objects are built, with a message naming the setting
    and the value (the CLI turns it into one ``cepo: error:`` line, ``tests/test_bad_input.py``)."""
    with pytest.raises(ValueError) as err:
        run_cli(tmp_path, flag, value)
    assert str(err.value) == message


def test_a_good_setting_next_to_the_bad_ones_builds(tmp_path):
    """The control for the cases above: the same command line with a valid change builds, and
    the change took effect."""
    cli = run_cli(tmp_path, "--model.credit", "Contrastive")
    assert type(cli.model.credit).__name__ == "Contrastive"
    assert cli.datamodule.group_size == 8 and cli.model.hparams.eps_low == 0.2


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


SCALE = ROOT / "configs" / "scale"


@pytest.mark.parametrize(
    "files, strategy, processes, backend",
    [
        (["cpu_ddp.yaml"], "DDPStrategy", 2, "gloo"),
        (["cpu_fsdp.yaml"], "ModelParallelStrategy", 2, "gloo"),
        (["ddp.yaml"], "DDPStrategy", 8, "nccl"),
        (["fsdp.yaml"], "ModelParallelStrategy", 8, None),
        (["ddp.yaml", "multinode.yaml"], "DDPStrategy", 16, "nccl"),
    ],
)
def test_scale_configs_build_their_strategies(tmp_path, files, strategy, processes, backend):
    """Each configs/scale file builds the Lightning strategy it names, for devices x nodes processes
    (GPU files with the accelerator set to CPU here: built, not launched), and a FSDP file shards
    data-parallel over every process."""
    flags = [f for name in files for f in on_this_machine(SCALE / name)[0]]
    trainer = run_cli(tmp_path, *flags).trainer
    assert type(trainer.strategy).__name__ == strategy
    assert trainer.num_devices * trainer.num_nodes == processes
    assert trainer.strategy.process_group_backend == backend
    if strategy == "ModelParallelStrategy":
        assert trainer.strategy._data_parallel_size == processes and trainer.strategy._tensor_parallel_size == 1


def test_scale_gpu_configs_use_colocated_vllm_engines(tmp_path):
    for name in ("ddp.yaml", "fsdp.yaml"):
        cli = run_cli(tmp_path, *on_this_machine(SCALE / name)[0])
        engine = cli.datamodule.engine
        assert type(engine).__name__ == "VLLMEngine" and engine.distributed_executor_backend == "external_launcher"
        assert engine.enable_sleep_mode and engine.tensor_parallel_size == 1 and engine.gpu_memory_utilization < 1
        assert cli.config.trainer.precision == "bf16-mixed" and engine.dtype == "bfloat16"
        assert cli.model.hparams.dtype == ("float32" if name == "fsdp.yaml" else "bfloat16")  # FSDP: master weights


def test_fsdp1_strategy_is_refused_by_name(tiny_dir):
    """Lightning's FSDPStrategy (FSDP1) cannot run on CPU (Lightning refuses it) and cepo's sharded
    paths are FSDP2's: the module says so before loading anything."""
    import types

    from lightning.pytorch.strategies import FSDPStrategy

    from cepo.module import RLModule

    module = RLModule(model_path=str(tiny_dir))
    module._trainer = types.SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="trainer.strategy: FSDPStrategy .FSDP1. is unsupported"):
        module.configure_model()
    assert module.policy is None

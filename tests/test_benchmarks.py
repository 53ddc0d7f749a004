"""Benchmarks: GSM8K / MATH rows, the math-verify verifier, and per-benchmark validation."""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cepo.cli import cli_main
from cepo.policy import PolicyRef
from cepo.rollout.datamodule import RolloutDataModule
from cepo.rollout.engine import Generation, RolloutEngine, SamplingConfig
from cepo.rollout.evaluator import truncate_left
from cepo.tasks import Arithmetic, Example, JsonlTask
from cepo.tasks import jsonl as jsonl_module
from cepo.tasks.benchmarks import JsonlBenchmark
from cepo.tasks.jsonl import run_with_timeout

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
GSM8K = FIXTURES / "gsm8k_test_sample.jsonl"
MATH500 = FIXTURES / "math500_sample.jsonl"


# -- rows ------------------------------------------------------------------------------
def test_gsm8k_rows_take_the_answer_after_hashes():
    rows = JsonlBenchmark(str(GSM8K)).split("val")
    assert len(rows) == 20
    assert rows[0].prompt.startswith("Question: Janet\u2019s ducks lay 16 eggs per day.")
    assert rows[0].prompt.endswith("\nAnswer:")
    assert [r.answer for r in rows[:3]] == ["18", "3", "70000"]
    assert rows[0].solution == ""  # GSM8K rows carry the worked answer in "answer", not "solution"


def test_math_rows_prefer_the_answer_field_then_the_last_boxed(tmp_path):
    rows = JsonlBenchmark(str(MATH500)).split("test")
    assert len(rows) == 20
    assert rows[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rows[0].prompt.startswith("Question: Convert the point $(0,3)$")
    assert "\\boxed{" in rows[0].solution
    f = tmp_path / "math.jsonl"
    solution = "First $\\boxed{2}$ is wrong; so $x = \\boxed{\\frac{1}{2}}$."
    f.write_text(json.dumps({"problem": "Solve $2x = 1$.", "solution": solution}) + "\n")
    (row,) = JsonlBenchmark(str(f)).split("val")
    assert row.answer == "\\frac{1}{2}"


def test_a_benchmark_has_no_training_split():
    bench = JsonlBenchmark(str(GSM8K))
    assert bench.split("train") == []
    assert bench.split("val") == bench.split("test")


# -- verifier --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("so the answer is $\\frac{1}{2}$", "0.5", True),
        ("The answer is \\boxed{3}", "3", True),
        ("\\boxed{14/3}", "\\frac{14}{3}", True),
        ("so $(3, \\pi/2)$", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{\\sqrt{117}}", "3\\sqrt{13}", True),
        ("\\boxed{-q + p}", "p - q", True),
        ("He makes \\$18,000.", "18000", True),
        ("so #### 18 eggs. Then 20", "18", True),  # the GSM8K "#### n" tail, by exact match
        ("\\boxed{4}", "3", False),
        ("\\boxed{\\frac{1}{3}}", "0.5", False),
        ("", "9", False),
        ("no number at all {{{", "2", False),
    ],
)
def test_math_verify_verifier(response, answer, expected):
    assert JsonlTask().is_correct(response, answer) is expected


@pytest.mark.parametrize(
    "response, answer, expected",
    [("0.5", "\\frac{1}{2}", False), ("\\boxed{3}", "3", True), ("#### 1,000", "1000", True)],
)
def test_exact_verifier_compares_normalised_answers(response, answer, expected):
    assert JsonlTask(verifier="exact").is_correct(response, answer) is expected


def test_bad_verifier_settings_fail_early():
    with pytest.raises(ValueError, match="task.verifier"):
        JsonlTask(verifier="sympy")
    with pytest.raises(ValueError, match="task.verify_timeout"):
        JsonlBenchmark(str(GSM8K), verify_timeout=0)


def test_verifier_is_safe_off_the_main_thread():
    task = JsonlTask(verify_timeout=30)
    cases = [("0.5", "\\frac{1}{2}", True), ("\\boxed{\\sqrt{117}}", "3\\sqrt{13}", True), ("\\boxed{4}", "3", False)]
    results = {}

    def check(i, response, answer):
        results[i] = task.is_correct(response, answer)

    threads = [threading.Thread(target=check, args=(i, r, a)) for i, (r, a, _) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: expected for i, (_, _, expected) in enumerate(cases)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda c: task.is_correct(c[0], c[1]), cases))
    assert got == [expected for _, _, expected in cases]


def test_run_with_timeout_returns_raises_and_times_out():
    assert run_with_timeout(lambda: 7, 5.0) == 7
    with pytest.raises(KeyError):
        run_with_timeout(lambda: {}["missing"], 5.0)
    release = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        run_with_timeout(lambda: release.wait(30), 0.2)
    assert time.perf_counter() - t0 < 5
    release.set()


def test_verifier_timeout_and_errors_fall_back_to_exact_match(monkeypatch, caplog):
    release = threading.Event()
    monkeypatch.setattr(jsonl_module, "math_verify_equal", lambda response, answer: release.wait(30))
    task = JsonlTask(verify_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="cepo.tasks.jsonl"):
        assert task.is_correct("0.5", "\\frac{1}{2}") is False  # math-verify would say True
    assert "no verdict within 0.2s" in caplog.text
    assert task.is_correct("#### 18", "18") is True  # exact match needs no math-verify
    release.set()

    def broken(response, answer):
        raise ValueError("unparsable")

    monkeypatch.setattr(jsonl_module, "math_verify_equal", broken)
    assert task.is_correct("0.5", "\\frac{1}{2}") is False
    assert task.is_correct("\\boxed{3}", "3") is True


# -- data module -----------------------------------------------------------------------
def test_truncate_left_keeps_the_tail():
    prompts = [[1, 2, 3, 4, 5], [6, 7], []]
    assert truncate_left(prompts, 3) == ([[3, 4, 5], [6, 7], []], 1)
    assert truncate_left(prompts, 0) == ([[5], [7], []], 2)  # at least one token is kept
    assert truncate_left(prompts, 10) == (prompts, 0)


def test_one_val_dataloader_per_benchmark():
    bench = {"arith": Arithmetic(train_size=10, val_size=5), "gsm8k": JsonlBenchmark(str(GSM8K))}
    dm = RolloutDataModule(benchmarks=bench, eval_size=3, eval_batch_size=2)
    dm.setup("validate")
    loaders = dm.val_dataloader()
    assert [len(dl.dataset) for dl in loaders] == [3, 3]
    assert dm.benchmark_names == ["arith", "gsm8k"]
    assert dm.eval_task(1) is bench["gsm8k"]
    assert next(iter(loaders[1])).examples[0].answer == "18"
    task = Arithmetic(train_size=10, val_size=4)
    single = RolloutDataModule(task=task).val_dataloader()
    assert len(single.dataset) == 4 and single.dataset.rows == task.split("val")


class FixedEngine(RolloutEngine):
    """Answers every prompt with the same text; records the prompts; a short context."""

    max_model_len = 12

    def __init__(self, tokenizer, text):
        self.response = tokenizer(text, add_special_tokens=False).input_ids
        self.prompts = []

    def setup(self, policy, tokenizer, model_path):
        pass

    def generate(self, prompt_ids, n, sampling):
        self.prompts.append(prompt_ids)
        return Generation([list(self.response) for _ in prompt_ids for _ in range(n)], None, 0)


def test_evaluate_verifies_with_the_given_task_and_cuts_long_prompts():
    from cepo.bases.tiny import char_tokenizer

    tok = char_tokenizer()
    engine = FixedEngine(tok, "so 0.5")
    dm = RolloutDataModule(engine=engine, eval_k=2, sampling=SamplingConfig(max_new_tokens=4))
    dm.connect(PolicyRef(None, tok, ""))  # no model: the engine's max_model_len (12) is the context
    rows = [Example("Question: a long question?\nAnswer:", "\\frac{1}{2}"), Example("Q: 1?", "1")]
    batch = dm.evaluate(rows, JsonlTask())
    assert batch.greedy_correct.tolist() == [True, False]
    assert batch.sample_correct.tolist() == [[True, True], [False, False]]
    assert not dm.evaluate(rows, Arithmetic()).greedy_correct.any()  # exact match after "="
    assert [tok.decode(p) for p in engine.prompts[0]] == ["\nAnswer:", "Q: 1?"]  # 12 - 4 = 8 tokens kept


def test_bad_benchmarks_fail_before_evaluation(tmp_path):
    with pytest.raises(ValueError, match="data.benchmarks names"):
        RolloutDataModule(benchmarks={"a/b": Arithmetic()})
    empty = RolloutDataModule(benchmarks={"none": JsonlTask(train=str(GSM8K))})
    with pytest.raises(ValueError, match="benchmark 'none' has no 'val' split"):
        empty.setup("validate")
    missing = RolloutDataModule(benchmarks={"gone": JsonlBenchmark(str(tmp_path / "gone.jsonl"))})
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        missing.setup("validate")


# -- end to end ------------------------------------------------------------------------
def _validate(tmp_path, tiny_dir, *extra):
    return cli_main(
        [
            "validate",
            "--config",
            str(ROOT / "configs" / "default.yaml"),
            *extra,
            "--model.model_path",
            str(tiny_dir),
            "--data.eval_size",
            "3",
            "--data.eval_k",
            "2",
            "--data.sampling.max_new_tokens",
            "16",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--run_root",
            str(tmp_path),
        ]
    )


def test_validate_reports_every_benchmark_and_their_mean(tmp_path, tiny_dir, monkeypatch, caplog, capsys):
    monkeypatch.chdir(ROOT)  # the config names the fixtures relative to the repository root
    with caplog.at_level(logging.WARNING, logger="cepo.rollout.evaluator"):
        cli = _validate(tmp_path, tiny_dir, "--config", str(ROOT / "configs" / "eval" / "benchmarks.yaml"))
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    names = ["arithmetic", "gsm8k", "math500"]
    for name in names:
        for key in ("acc", "avg@2", "pass@2", "response_len"):
            assert 0 <= metrics[f"val/{name}/{key}"] <= (16 if key == "response_len" else 1), (name, key)
    for key in ("acc", "avg@2", "pass@2", "response_len"):
        mean = sum(metrics[f"val/{n}/{key}"] for n in names) / len(names)
        assert metrics[f"val/{key}"] == pytest.approx(mean, abs=1e-6), key
    # GSM8K / MATH-500 prompts exceed the 256 positions less 16 new tokens: cut, not failed
    assert "evaluation prompts exceed the context (256 tokens less 16 new)" in caplog.text
    out = capsys.readouterr().out
    assert "val/gsm8k/pass@2" in out and "val/math500/acc" in out and "val/acc" in out
    # per-sample outputs: the greedy answer and 2 samples of every problem, each verified as logged
    rows = [json.loads(line) for line in (tmp_path / "samples" / "validate.jsonl").read_text().splitlines()]
    for name in names:
        mine = [r for r in rows if r["benchmark"] == name]
        greedy = [r for r in mine if r["sample"] == "greedy"]
        assert len(mine) == 3 * len(greedy) and sorted(r["index"] for r in greedy) == list(range(len(greedy)))
        assert sum(r["correct"] for r in greedy) / len(greedy) == pytest.approx(metrics[f"val/{name}/acc"], abs=1e-6)
        assert all(r["tokens"] <= 16 and (r["tokens"] == 16 or not r["truncated"]) for r in mine)
        assert sum(r["truncated"] for r in greedy) / len(greedy) == pytest.approx(metrics[f"val/{name}/truncated"])
    assert set(rows[0]) >= {"prompt", "response", "extracted", "reference", "correct", "tokens", "truncated"}


def test_validate_without_benchmarks_keeps_the_single_task_keys(tmp_path, tiny_dir):
    cli = _validate(tmp_path, tiny_dir)
    keys = {"val/acc", "val/avg@2", "val/pass@2", "val/response_len", "val/truncated"}
    assert set(cli.trainer.callback_metrics) == keys
    assert cli.model.val_metrics.names == []
    assert torch.is_tensor(cli.trainer.callback_metrics["val/acc"])


# -- the step-time cost model (benchmarks/cost_model.py): its fitting code on hand-worked numbers --
def _cost_model():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import cost_model
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return cost_model


def test_cost_model_fit_by_hand():
    fit = _cost_model().fit
    exact = fit([[0, 1, 2, 3]], [1, 3, 5, 7])  # y = 1 + 2x
    assert exact["coef"] == pytest.approx([1, 2]) and exact["r2"] == pytest.approx(1)
    # y = (0, 2, 1) at x = (0, 1, 2): slope 0.5, intercept 0.5, fitted (0.5, 1, 1.5), residuals
    # (-0.5, 1, -0.5): RSS 1.5 of TSS 2, R^2 0.25; var(b) = 1.5 / (3 - 2) / Sxx 2 = 0.75
    noisy = fit([[0, 1, 2]], [0, 2, 1])
    assert noisy["coef"] == pytest.approx([0.5, 0.5]) and noisy["r2"] == pytest.approx(0.25)
    assert noisy["se"][1] == pytest.approx(0.75**0.5) and noisy["t"][1] == pytest.approx(0.5 / 0.75**0.5)
    assert noisy["adj_r2"] == pytest.approx(1 - 0.75 * 2 / 1)
    assert fit([[0, 1]], [0, 1])["se"] is None  # two points, two coefficients: no error estimate


def test_cost_model_finds_a_superlinear_term_only_where_there_is_one():
    cm = _cost_model()
    # rollouts x tokens: 4 x 10, 8 x 10, 4 x 20, 8 x 20, 16 x 30, 16 x 10
    grid = [(4, 10), (8, 10), (4, 20), (8, 20), (16, 30), (16, 10)]
    noise = [0.01, -0.01, 0.0, 0.01, -0.01, 0.0]

    def points(c):
        return [
            {"X": n * t, "Z": n * t * t, "total": 0.2 + 0.001 * n * t + c * n * t * t + e}
            for (n, t), e in zip(grid, noise)
        ]

    linear = cm.superlinear(points(0.0))
    assert linear["linear"]["coef"][1] == pytest.approx(0.001, rel=0.05)
    assert not linear["superlinear_significant"]
    # a term that improves the adjusted R^2 (|t| > 1) but is within twice its error: not significant
    weak = cm.superlinear(points(6e-6))
    assert 1 < weak["superlinear"]["t"][2] < 2 and weak["superlinear"]["adj_r2"] > weak["linear"]["adj_r2"]
    assert not weak["superlinear_significant"]
    quadratic = cm.superlinear(points(2e-5))
    assert quadratic["superlinear"]["coef"][2] == pytest.approx(2e-5, rel=0.1)
    assert quadratic["superlinear_significant"]
    shrinking = cm.superlinear(points(-2e-5))  # a significant term, but cost growing less than linearly
    assert shrinking["superlinear"]["t"][2] < -2 and not shrinking["superlinear_significant"]
    shares = cm.shares([{"wall": 2.0, "a": 1.0, "b": 0.5}, {"wall": 2.0, "a": 1.0, "b": 1.5}], ["a", "b"])
    assert shares == {"a": 0.5, "b": 0.5}


# -- benchmarks/vs_trl.py: cepo against TRL's GRPOTrainer --------------------------------
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
needs_trl = pytest.mark.skipif(not TRL_PYTHON.is_file(), reason="no .venv-trl (run `bash scripts/setup_trl.sh`)")


@pytest.fixture(scope="module")
def vs_trl():
    """benchmarks/vs_trl.py and benchmarks/trl_runner.py (which imports no cepo and no TRL at import)."""
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("vs_trl"), importlib.import_module("trl_runner")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _matched(vs, model, tmp_path, **kw):
    train, test = vs.write_data(model, tmp_path / "data")
    size = dict(vs.DEFAULTS[model], **kw)
    return vs.Matched(
        model=model,
        model_path=str(tmp_path / "model"),
        train_file=str(train),
        test_file=str(test),
        chat=model == "smollm2",
        verifier="final_number" if model == "tiny" else "exact",
        seed=3,
        lora=vs.LORA if model == "smollm2" else None,
        **size,
    )


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
def test_vs_trl_gives_both_sides_the_same_settings(vs_trl, model, tmp_path, capsys):
    """cepo's resolved config (its own parser) and TRL's GRPOConfig arguments say the same thing."""
    import yaml

    vs, _ = vs_trl
    s = _matched(vs, model, tmp_path)
    args = vs.cepo_fit_args(s, tmp_path / "runs", "cepo", "v", tmp_path / "clock.json")
    with pytest.raises(SystemExit):  # benchmarks/ is on sys.path (the fixture): StepClock resolves
        cli_main(["fit", *args, "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    trl = vs.trl_settings(s, tmp_path / "trl")
    g = trl["grpo_config"]
    m, d = cfg["model"], cfg["data"]
    assert m["model_path"] == trl["model_path"] == s.model_path
    assert (
        d["prompts_per_step"] * d["group_size"] == g["per_device_train_batch_size"] * g["gradient_accumulation_steps"]
    )
    assert d["group_size"] == g["num_generations"] == 8
    assert m["micro_batch_size"] == g["per_device_train_batch_size"]
    assert d["sampling"]["max_new_tokens"] == g["max_completion_length"]
    assert d["sampling"]["temperature"] == g["temperature"] == 1.0
    assert d["sampling"]["top_p"] == g["top_p"] == 1.0 and d["sampling"]["top_k"] == g["top_k"] == 0
    assert m["optimizer"]["class_path"] == "torch.optim.AdamW" and g["optim"] == "adamw_torch"
    assert m["optimizer"]["init_args"]["lr"] == g["learning_rate"] == s.lr
    assert m["optimizer"]["init_args"]["weight_decay"] == g["weight_decay"] == 0.01
    assert m["lr_scheduler"] is None and g["lr_scheduler_type"] == "constant"
    assert m["grad_clip"] == g["max_grad_norm"] == 1.0
    assert m["kl_coef"] == g["beta"] == 0.0
    assert (
        m["num_minibatches"] == g["num_iterations"] == 1
        and g["gradient_accumulation_steps"] * g["per_device_train_batch_size"] == s.prompts_per_step * s.group_size
    )  # one optimizer update per rollout batch
    assert "steps_per_generation" not in g and "generation_batch_size" not in g  # TRL: one generation per update
    assert (m["eps_low"], m["eps_high"]) == (g["epsilon"], g["epsilon_high"]) == (0.2, 0.28)
    assert m["loss_agg"] == "token_mean" and g["loss_type"] == "dapo"
    assert m["advantage_scale"] == "std" and g["scale_rewards"] == "group"
    assert cfg["trainer"]["max_steps"] == g["max_steps"] == s.steps
    assert cfg["seed_everything"] == d["sampling"]["seed"] == g["seed"] == 3
    assert m["dtype"] == "float32" and g["bf16"] is False and g["fp16"] is False
    assert m["gradient_checkpointing"] is False and g["gradient_checkpointing"] is False
    assert cfg["trainer"]["callbacks"][0]["class_path"] == "step_clock.StepClock"
    if model == "smollm2":
        assert m["lora"] == "on" and m["lora_settings"] == trl["lora"] == vs.LORA
        assert d["prompt_format"]["class_path"] == "cepo.prompts.Chat" and trl["chat"] is True
        assert d["task"]["init_args"]["train"] == trl["train_file"]
        assert d["task"]["init_args"]["verifier"] == "exact" and trl["verifier"] == "exact"
        assert d["engine"]["class_path"] == "cepo.rollout.hf_engine.HFEngine"
    else:
        assert m["lora"] == "off" and trl["lora"] is None
        assert d["task"]["class_path"] == "cepo.tasks.Arithmetic" and trl["verifier"] == "final_number"
        assert trl["chat"] is False


def test_vs_trl_data_file_holds_the_rows_cepo_trains_on(vs_trl, tmp_path):
    vs, runner = vs_trl
    train, test = vs.write_data("tiny", tmp_path / "tiny")
    task = Arithmetic()
    for path, split in ((train, "train"), (test, "test")):
        rows = runner.load_rows(str(path), chat=False)  # what TRL's side reads
        assert [(r["prompt"], r["answer"]) for r in rows] == [(e.prompt, e.answer) for e in task.split(split)]
    train, test = vs.write_data("smollm2", tmp_path / "smollm2")
    cepo_rows = JsonlTask(train=str(train), test=str(test), prompt_template="{question}", verifier="exact")
    for path, split in ((train, "train"), (test, "test")):
        rows = runner.load_rows(str(path), chat=True)
        assert [r["prompt"] for r in rows] == [[{"role": "user", "content": e.prompt}] for e in cepo_rows.split(split)]
        assert [r["answer"] for r in rows] == [e.answer for e in cepo_rows.split(split)]
    assert rows[0]["prompt"][0]["content"].startswith("What is ") and "\\boxed{}" in rows[0]["prompt"][0]["content"]


RESPONSES = [
    " 15-5+9 = 10+9 = 19",
    " 15-5+9 = 10+9 = 18",
    " 15-5+9 = 10+9 =19 ",
    " 15-5+9 = 10+9 = ",
    " 15-5+9 = 10+9",
    "19",
    "= 19.",
    "= -19",
    "The answer is \\boxed{19}.",
    "\\boxed{1,9} then 19",
    "\\boxed{19,000}",
    "\\boxed{19000.}",
    "#### 19, 000",
    "\\boxed{}",
    "so #### 19 eggs",
    "19.0",
    "8 + 11 = 19\n\nThe final answer is 19.",
    "\\boxed{\\frac{38}{2}}",
    "",
]


def test_trl_runner_reward_gives_cepos_verdicts(vs_trl):
    """The reward TRL's side computes is the verifier cepo's side uses (the runner imports no cepo)."""
    _, runner = vs_trl
    arithmetic, exact = Arithmetic(), JsonlTask(verifier="exact")
    verdicts = {"final_number": [], "exact": []}
    for answer in ("19", "0", "19000", "1,9"):
        for response in RESPONSES + [e.solution for e in arithmetic.split("test")[:50]]:
            for verifier, task in (("final_number", arithmetic), ("exact", exact)):
                got = runner.is_correct(response, answer, verifier)
                assert got == task.is_correct(response, answer), (verifier, response, answer)
                verdicts[verifier].append(got)
    assert all(any(v) and not all(v) for v in verdicts.values())  # both verdicts occur
    reward = runner.make_reward("exact")
    assert reward(["= 19", [{"role": "assistant", "content": "\\boxed{19}"}], "18"], ["19", "19", "19"]) == [1, 1, 0]


@pytest.mark.e2e
@needs_trl
def test_trl_runner_trains_and_saves_a_folder_cepo_loads(vs_trl, tiny_dir, tmp_path):
    """TRL's side end to end in .venv-trl: two GRPO steps on the tiny model, per-step wall times,
    and a saved folder that cepo's evaluator reads."""
    import subprocess

    vs, _ = vs_trl
    s = _matched(vs, "tiny", tmp_path, prompts_per_step=2, group_size=2, max_new_tokens=8, steps=2, micro_batch=2)
    s.model_path = str(tiny_dir)
    out = tmp_path / "trl"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(vs.trl_settings(s, out)))
    env = vs.offline_env(PYTHONPATH="")
    done = subprocess.run(
        [str(TRL_PYTHON), str(ROOT / "benchmarks" / "trl_runner.py"), str(out / "settings.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 2 and len(result["step_seconds"]) == 2 and len(result["rewards"]) == 2
    assert result["versions"]["trl"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = AutoModelForCausalLM.from_pretrained(tiny_dir)
    after = AutoModelForCausalLM.from_pretrained(result["model"])
    assert (
        AutoTokenizer.from_pretrained(result["model"])("1+2=").input_ids
        == AutoTokenizer.from_pretrained(tiny_dir)("1+2=").input_ids
    )
    assert set(before.state_dict()) == set(after.state_dict())


def _trl_batches(tiny_dir, steps: int = 2, group: int = 4, prompts: int = 2) -> list[dict]:
    """Generation batches in the layout ``trl_runner.py`` records (left-padded prompts,
    right-padded completions ending in EOS, TRL's advantages, rewards), from random tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        n = prompts * group
        p_len = [int(x) for x in torch.randint(3, 7, (prompts,), generator=g)]
        c_len = [int(x) for x in torch.randint(2, 9, (n,), generator=g)]
        prompt = [torch.randint(3, 60, (k,), generator=g).tolist() for k in p_len]
        pids = [prompt[i // group] for i in range(n)]  # group-major: a group's rows share its prompt
        cids = [torch.randint(3, 60, (c - 1,), generator=g).tolist() + [tok.eos_token_id] for c in c_len]
        lp, lc = max(map(len, pids)), max(map(len, cids))
        rewards = torch.tensor([float(i % 3 == 0) for i in range(n)])
        r = rewards.view(-1, group)
        out.append(
            {
                "prompt_ids": torch.tensor([[tok.pad_token_id] * (lp - len(p)) + p for p in pids]),
                "prompt_mask": torch.tensor([[0] * (lp - len(p)) + [1] * len(p) for p in pids]),
                "completion_ids": torch.tensor([c + [tok.pad_token_id] * (lc - len(c)) for c in cids]),
                "completion_mask": torch.tensor([[1] * len(c) + [0] * (lc - len(c)) for c in cids]),
                "advantages": ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1),
                "rewards": rewards,
                "prompts": [f"p{i // group}" for i in range(n)],
                "answers": ["0"] * n,
            }
        )
    return out


def test_trl_replay_is_the_dapo_update_written_out(vs_trl, tiny_dir):
    """``benchmarks/trl_replay.py`` (cepo's ``RolloutStep.update`` on recorded TRL batches, then clip and AdamW)
    equals the GRPO/DAPO update written directly: loss ``-sum A_i * logp_t / (response tokens of
    the batch)`` (the ratio is 1 with one update per batch), the same clip and AdamW."""
    import copy
    import importlib

    from transformers import AutoModelForCausalLM

    replay = importlib.import_module("trl_replay")
    batches = _trl_batches(tiny_dir)
    module, norms = replay.replay(batches, str(tiny_dir), group_size=4, lr=1e-3, micro_batch=3)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    start = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for b, norm in zip(batches, norms):
        ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
        attention = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
        position = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attention, position_ids=position).logits
        lp = b["prompt_ids"].shape[1]
        logp = torch.log_softmax(logits[:, lp - 1 : -1].float(), -1).gather(-1, b["completion_ids"][..., None])[..., 0]
        r = b["rewards"].view(-1, 4)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1, 1)
        mask = b["completion_mask"].float()
        loss = -(adv * logp * mask).sum() / mask.sum()
        loss.backward()
        assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) == pytest.approx(norm, rel=1e-4)
        opt.step()
        opt.zero_grad()
    assert replay.distance(module.policy, model) < 1e-4 * replay.distance(model, start)  # float noise only
    assert replay.distance(model, start) > 0


def test_vs_trl_measures_each_sides_peak_memory(vs_trl, tmp_path):
    """``run`` reads the child's own peak resident set (a child that holds 300 MB for a second
    reports about that, not this process's, even when this process is bigger), and the table
    states both sides' peaks and their ratio."""
    import sys

    vs_trl, _ = vs_trl
    ballast = bytearray(700 * 2**20)  # this process: bigger than the child
    ballast[::4096] = b"x" * len(ballast[::4096])
    grab = "import numpy, time; a = numpy.ones(300 * 2**20 // 8); a += 1; time.sleep(1)"
    vs_trl.run([sys.executable, "-c", grab], dict(__import__("os").environ), tmp_path / "log.txt")
    assert 300 < vs_trl.LAST_PEAK_MB < 600
    del ballast
    side = lambda step, peak: {
        "steady": {"mean": step, "p10": step},
        "process_seconds": 10.0,
        "peak_mb": peak,
        "acc": 0.5,
        "time_total": {"mean": step},
        "stages": {"train": 1.0},
        "zero_var_frac": 0.0,
        "generate": {"mean": 0.5},
    }
    rounds = [{"cepo": side(1.0, peak), "trl": side(2.0, 1000.0)} for peak in (600.0, 400.0)]
    summary = vs_trl.summarise(rounds, 0.4)
    assert summary["memory_ratio"] == 0.5 and summary["memory_ratio_per_round"] == [0.6, 0.4]
    s = _matched(vs_trl, "tiny", tmp_path)
    text = vs_trl.table(s, summary, 0.4, 10, rounds, 1)
    assert "peak-memory ratio cepo/TRL (whole processes' resident sets): 0.50 (per round 0.60 / 0.40)" in text
    assert "| cepo fit | 1.000 | 1.000 / 1.000 | 10.0 | 500 |" in text


@pytest.mark.e2e
@pytest.mark.slow
def test_memory_benchmark_measures_the_training_pass_variants(tmp_path):
    """``benchmarks/memory.py pass`` at test size: each variant in its own process, a shared
    prompt runs fewer tokens than plain rows, and every figure is written to the results file."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "pass", "--models", "tiny-text", "--lengths", "16"]
        + ["--layers", "1", "--rows", "4", "--prompt", "20", "--variants", "plain", "shared", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = {r["variant"]: r for r in json.loads((tmp_path / "memory_pass.json").read_text())["results"]}
    assert results["plain"]["tokens_run"] == 4 * 20 + sum(results["plain"]["response_lengths"])
    assert results["shared"]["tokens_run"] == 20 + sum(results["plain"]["response_lengths"])
    assert all(r["seconds"] > 0 and r["added_peak_mb"] >= 0 for r in results.values())
    assert "| tiny-text | 16 | shared |" in (tmp_path / "memory_pass.md").read_text()


def test_vs_trl_states_the_issues_targets():
    """SmolLM2: step time at most 0.5x TRL's and peak memory at most 0.6x; tiny: time 0.4x."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import vs_trl
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    line = vs_trl.targets({"ratio": 0.59, "memory_ratio": 2720 / 4551}, "smollm2")
    assert line == "target step time cepo <= 0.5x TRL: not met; peak memory <= 0.6x TRL: met"
    line = vs_trl.targets({"ratio": 0.45, "memory_ratio": 0.7}, "smollm2")
    assert line == "target step time cepo <= 0.5x TRL: met; peak memory <= 0.6x TRL: not met"
    assert vs_trl.targets({"ratio": 0.39, "memory_ratio": 2.0}, "tiny") == "target step time cepo <= 0.4x TRL: met"

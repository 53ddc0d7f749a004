"""cepo.rollout.evaluator without a Trainer: the rows each validation batch carries (benchmark and
position in the split, as the samples callback writes them), evaluations that leave training's
random draws alone, the evaluation samples' seeds, and the metrics by hand."""

import pytest
import torch

from cepo.bases.tiny import char_tokenizer
from cepo.policy import PolicyRef
from cepo.rollout.datamodule import RolloutDataModule
from cepo.rollout.engine import Generation, RolloutEngine, SamplingConfig
from cepo.rollout.evaluator import EVAL_CALLS_START, EvalBatch, EvalMetrics, EvalRows, eval_sampling
from cepo.tasks import Arithmetic
from tests.helpers import TextParity

ROW_KEYS = ["benchmark", "index", "prompt", "sample", "response", "extracted", "reference", "correct"]


class DrawingEngine(RolloutEngine):
    """Answers every prompt with ``text``; each call counts itself and draws from the global stream,
    as the transformers engine does."""

    def __init__(self, text: str = "= 3") -> None:
        self.text = text
        self._calls = 0

    def setup(self, policy, tokenizer, model_path):
        self.response = tokenizer(self.text, add_special_tokens=False).input_ids

    def sync_weights(self, policy, version):
        self.weight_version = version

    def generate(self, prompt_ids, n, sampling):
        self._calls += 1
        torch.rand(1)
        return Generation([list(self.response) for _ in prompt_ids for _ in range(n)], None, 0)


def connected(**kw) -> RolloutDataModule:
    dm = RolloutDataModule(engine=DrawingEngine(), prompts_per_step=2, **kw)
    dm.connect(PolicyRef(None, char_tokenizer(), ""))
    return dm


def test_rows_carry_their_benchmark_and_position_in_the_split():
    """What ``samples/*.jsonl`` holds: each response's benchmark and its problem's index in the
    held-out split, across batches of every validation DataLoader, the greedy answer first."""
    bench = {"parity": TextParity(val_size=5, test_size=5), "arith": Arithmetic(val_size=3, test_size=3)}
    dm = connected(benchmarks=bench, eval_batch_size=2, eval_k=2)
    for idx, (name, loader) in enumerate(zip(bench, dm.val_dataloader())):
        rows = [r for b in loader for r in dm.evaluator.isolated(dm.sampler, b, idx).records]
        n = len(bench[name].split("val"))
        assert {r["benchmark"] for r in rows} == {name}
        assert [r["index"] for r in rows if r["sample"] == "greedy"] == list(range(n))
        assert sorted(r["index"] for r in rows if r["sample"] != "greedy") == sorted(list(range(n)) * 2)
        assert all(r["prompt"].startswith(bench[name].split("val")[r["index"]].prompt) for r in rows)
        assert list(rows[0])[: len(ROW_KEYS)] == ROW_KEYS  # the JSONL's key order
    (task_row, *_) = connected(eval_k=0).evaluate([Arithmetic().split("val")[0]]).records
    assert task_row["benchmark"] == "task" and task_row["index"] == 0  # without benchmarks


def test_an_evaluation_leaves_training_draws_alone():
    """Evaluations draw from their own engine counter and a forked global stream: training's
    counter and random stream are as they were, and the evaluation counter moves on."""
    dm = connected(task=TextParity(train_size=12, val_size=6, test_size=6), eval_k=2)
    dm.engine.load_state_dict({"calls": 7})
    rows = EvalRows([0, 1], dm.eval_rows()[:2])
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    dm.evaluator.isolated(dm.sampler, rows)
    assert torch.equal(torch.rand(1), expected_next)  # training's stream as if no evaluation ran
    assert dm.engine.state_dict()["calls"] == 7  # training's engine counter put back
    assert dm.evaluator.calls == EVAL_CALLS_START + 2  # greedy and sampled: two engine calls
    dm.evaluator.isolated(dm.sampler, rows)
    assert dm.evaluator.calls == EVAL_CALLS_START + 4 and dm.engine.state_dict()["calls"] == 7
    assert dm.state_dict()["eval_calls"] == EVAL_CALLS_START + 4  # checkpointed
    again = connected()
    again.load_state_dict(dm.state_dict())
    assert again.evaluator.calls == EVAL_CALLS_START + 4


def test_evaluation_sampling_seeds():
    """The evaluation samples' seed: the training seed (run seed folded in) + 10,000,019 by default;
    a given ``eval_sampling``'s own seed + 1,000,003 x the run seed + 10,000,019."""
    training = SamplingConfig(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12, stop=["\n"], seed=3)
    derived = eval_sampling(None, training, run_seed=2)
    assert derived == SamplingConfig(1.0, 0.9, 5, 12, ["\n"], 3 + 10_000_019)
    given = eval_sampling(SamplingConfig(temperature=0.6, seed=5), training, run_seed=2)
    assert given.temperature == 0.6 and given.seed == 5 + 2 * 1_000_003 + 10_000_019


def batch(greedy: list[bool], samples: list[list[bool]], lengths: list[float], cut: list[bool]) -> EvalBatch:
    return EvalBatch(torch.tensor(greedy), torch.tensor(samples), torch.tensor(lengths), torch.tensor(cut), [])


def test_metrics_by_hand():
    metrics = EvalMetrics(["a", "b"], k=2)
    metrics.update(batch([True, False], [[True, False], [False, False]], [4.0, 6.0], [False, True]), 0)
    metrics.update(batch([True], [[True, True]], [2.0], [False]), 0)
    metrics.update(batch([False], [[False, True]], [8.0], [True]), 1)
    got = {k: float(v) for k, v in metrics.compute().items()}
    # a: greedy 2/3, lengths 4, 6, 2, cut 1/3; samples 1 + 0 + 2 of 6, problems with one right: 2 of 3
    # b: greedy 0, length 8, cut 1; samples 1 of 2, pass 1
    want = {"acc": (2 / 3, 0.0), "response_len": (4.0, 8.0), "truncated": (1 / 3, 1.0)}
    want |= {"avg@2": (0.5, 0.5), "pass@2": (2 / 3, 1.0)}
    for key, (a, b) in want.items():
        assert got[f"val/a/{key}"] == pytest.approx(a) and got[f"val/b/{key}"] == pytest.approx(b), key
        assert got[f"val/{key}"] == pytest.approx((a + b) / 2), key  # benchmarks weigh equally
    assert len(got) == 15
    metrics.reset()
    metrics.update(batch([False], [[False, False]], [1.0], [False]), 1)
    assert float(metrics.compute()["val/b/acc"]) == 0.0
    alone = EvalMetrics([], k=0)
    alone.update(batch([True, True, False, False], [[]] * 4, [1.0, 2.0, 3.0, 4.0], [False] * 4))
    assert {k: float(v) for k, v in alone.compute().items()} == {
        "val/acc": 0.5,
        "val/response_len": 2.5,
        "val/truncated": 0.0,
    }

"""cepo.rollout.datamodule without a Trainer: its settings checks, the resumable data order, the
split across processes, and the evaluation rows and benchmark order (the evaluation itself:
tests/test_evaluator.py)."""

import pytest
import torch
from torch.utils.data import RandomSampler

from cepo.rollout.datamodule import RolloutDataModule
from cepo.rollout.index_sampler import ResumableSampler
from cepo.tasks import Arithmetic
from tests.helpers import TextParity


def sampler(dm: RolloutDataModule, n: int, **kw) -> ResumableSampler:
    """The training sampler as ``dm.train_dataloader`` builds it (its epoch log, its batches served)."""
    return ResumableSampler(n, dm.epoch_log, lambda: dm.served, None, **kw)


def data(**kw) -> RolloutDataModule:
    kw = {"task": TextParity(train_size=12, val_size=6, test_size=6), "prompts_per_step": 3, **kw}
    return RolloutDataModule(**kw)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("group_size", 1, "data.group_size must be >= 2"),
        ("prompts_per_step", 0, "data.prompts_per_step must be >= 1, got 0"),
        ("eval_k", -1, "data.eval_k must be >= 0, got -1"),
        ("eval_split", "train", "data.eval_split must be 'val' or 'test', got 'train'"),
        ("eval_size", 0, "data.eval_size must be >= 1"),
        ("eval_batch_size", 0, "data.eval_batch_size must be >= 1, got 0"),
        ("benchmarks", {"a/b": Arithmetic()}, "data.benchmarks names must be non-empty without '/'"),
    ],
)
def test_each_bad_setting_is_named(setting, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data(**{setting: value})


def test_too_few_training_prompts_for_one_step_is_refused():
    dm = data(prompts_per_step=13)
    with pytest.raises(ValueError, match=r"12 prompts, fewer than one step's data.prompts_per_step \(13\)"):
        dm.check_train()
    with pytest.raises(ValueError, match=r"\(7 x 2 processes\)"):
        data(prompts_per_step=7).check_train(world_size=2)
    data(prompts_per_step=6).check_train(world_size=2)  # exactly enough


def test_a_fresh_epoch_is_ordered_as_a_shuffled_dataloader():
    """Drawn from the global random stream exactly as ``RandomSampler`` draws it."""
    torch.manual_seed(5)
    ours = list(sampler(data(), 12))
    torch.manual_seed(5)
    assert ours == list(RandomSampler(range(12)))
    assert sorted(ours) == list(range(12))


def test_a_restored_epoch_continues_past_the_batches_served():
    dm = data()
    torch.manual_seed(1)
    order = list(sampler(dm, 12))
    dm.served = 2  # two batches of 3 prompts trained on, then a checkpoint
    state = dm.state_dict()
    after = torch.rand(3)  # what the global stream gives after the checkpoint
    torch.manual_seed(99)  # a new process, another stream
    again = data()
    again.load_state_dict(state)
    assert list(sampler(again, 12)) == order[6:]  # the same epoch, past the 6 served prompts
    assert torch.equal(torch.rand(3), after)  # the global random stream restored too
    assert list(sampler(again, 12)) != order[6:]  # the next epoch is a new one
    assert again.state_dict()["epochs"][-1][1] == 2  # it starts after the 2 batches served


def test_processes_take_disjoint_prompts_of_one_order():
    shards = []
    for rank in (0, 1):
        torch.manual_seed(3)  # ranks share the seed (broadcast from rank 0 under DDP)
        shards.append(list(sampler(data(), 11, num_replicas=2, rank=rank)))
    torch.manual_seed(3)
    full = list(sampler(data(), 11))
    assert len(shards[0]) == len(shards[1]) == 5
    assert shards[0] == full[0:10:2] and shards[1] == full[1:10:2]  # the last 11 % 2 left out
    assert not set(shards[0]) & set(shards[1])


def test_evaluation_rows_and_benchmark_order():
    dm = data(eval_size=4, eval_split="test")
    assert dm.eval_rows() == dm.task.split("test")[:4]
    assert list(dm.eval_tasks()) == [""] and dm.benchmark_names == []
    first, second = TextParity(val_size=3, test_size=3), Arithmetic(val_size=5, test_size=5)
    dm = data(benchmarks={"parity": first, "arith": second}, eval_size=None)
    assert dm.benchmark_names == ["parity", "arith"] and dm.eval_task(1) is second
    loaders = dm.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [3, 5]

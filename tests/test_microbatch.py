"""Micro-batch planning: length-grouped, trimmed micro-batches and skipped zero-loss rows
leave the gradient exactly as it was."""

import lightning as L
import pytest
import torch

from cepo import microbatch
from cepo.credit import Contrastive, Uniform
from cepo.module import GRPOModule
from tests.helpers import TextParity, one_sgd_step


def test_plan_covers_rows_once_grouped_by_length():
    # 6 rows, prompts left-padded to column 3; lengths (prompt + response) 5, 2, 7, 4, 3, 6
    attn = torch.tensor(
        [
            [1, 1, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 0],
        ]
    )
    rows = torch.tensor([0, 1, 2, 3, 5])  # row 4 is left out
    chunks = microbatch.plan(rows, attn, 3, size=2)
    assert [c.tolist() for c in chunks] == [[1, 3], [0, 5], [2]]
    assert [c.tolist() for c in microbatch.plan(rows, attn, 3, size=0)] == [[1, 3, 0, 5, 2]]
    assert [c.tolist() for c in microbatch.plan(rows, attn, 3, size=2, sort=False)] == [[0, 1], [2, 3], [5]]
    assert microbatch.plan(rows[:0], attn, 3, size=2) == []
    response_mask = attn[:, 3:].bool()
    assert microbatch.response_width(response_mask, torch.tensor([1, 3])) == 2
    assert microbatch.response_width(response_mask, torch.tensor([2, 4])) == 4
    assert microbatch.response_width(response_mask, torch.tensor([1])) == 1  # empty response: 1 column


class HalfConstant(TextParity):
    """Prompts with an even answer always score 0 (zero-variance groups); the others vary."""

    def reward(self, response, answer):
        return 0.0 if int(answer) % 2 == 0 else super().reward(response, answer)


def _one_step(tmp_path, tiny_dir, credit, micro_batch_size, skip):
    """One SGD step; also returns how many rows went through grad-enabled forward passes."""
    trained_rows = []

    class Count(L.Callback):
        def on_fit_start(self, tr, pl_module):
            def hook(mod, args, kwargs):
                if torch.is_grad_enabled():
                    trained_rows.append(kwargs["input_ids"].shape[0])

            pl_module.policy.register_forward_pre_hook(hook, with_kwargs=True)

    state, module = one_sgd_step(
        tmp_path,
        tiny_dir,
        task=HalfConstant(train_size=200, val_size=8, test_size=8),
        prompts=8,
        callbacks=[Count()],
        credit=credit,
        micro_batch_size=micro_batch_size,
        skip_zero_loss_rows=skip,
    )
    return state, sum(trained_rows), module


@pytest.mark.parametrize("credit", [Uniform, Contrastive], ids=["grpo", "cepo"])
def test_skipping_and_grouping_rows_leaves_the_step_unchanged(tmp_path, tiny_dir, credit):
    plain, rows_plain, module = _one_step(tmp_path / "a", tiny_dir, credit(), 0, skip=False)
    planned, rows_planned, _ = _one_step(tmp_path / "b", tiny_dir, credit(), 3, skip=True)
    batch = module.last_credit.batch
    groups = batch.rewards.view(-1, batch.group_size)
    constant = int((groups.max(1).values == groups.min(1).values).sum())
    assert 0 < constant < groups.shape[0]  # the batch had rows to skip and rows to train
    assert rows_plain == batch.num_rollouts
    assert rows_planned == batch.num_rollouts - constant * batch.group_size
    initial = GRPOModule(model_path=str(tiny_dir))
    initial.configure_model()
    moved = max(float((plain[k] - initial.policy.state_dict()[k]).abs().max()) for k in plain)
    assert moved > 1e-4  # the step did something
    for k in plain:
        assert torch.allclose(plain[k], planned[k], atol=2e-6), k

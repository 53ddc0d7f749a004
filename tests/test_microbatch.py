"""Micro-batch planning: length-grouped, trimmed micro-batches and skipped zero-loss rows
leave the gradient exactly as it was."""

import lightning as L
import pytest
import torch

from cepo.credit import Contrastive, Uniform
from cepo.module import RLModule
from cepo.scoring import microbatch
from tests.helpers import TextParity, one_sgd_step

# 6 rows, prompts left-padded to column 3; lengths (prompt + response) 5, 2, 7, 4, 3, 6
HAND_MASK = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
    ]
)


def test_plan_covers_rows_once_grouped_by_length():
    attn = HAND_MASK.clone()
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
                # rows of the passes that score responses (not the context passes of shared prompts)
                if torch.is_grad_enabled() and not (kwargs.get("use_cache") and kwargs.get("past_key_values") is None):
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
    initial = RLModule(model_path=str(tiny_dir))
    initial.configure_model()
    moved = max(float((plain[k] - initial.policy.state_dict()[k]).abs().max()) for k in plain)
    assert moved > 1e-4  # the step did something
    for k in plain:
        assert torch.allclose(plain[k], planned[k], atol=2e-6), k


def test_plan_by_token_budget_by_hand():
    attn = HAND_MASK.clone()
    rows = torch.tensor([0, 1, 2, 3, 5])
    # (prompt, response) by length: row 1 (2, 0), 3 (2, 2), 0 (3, 2), 5 (2, 4), 2 (3, 4); a micro-batch
    # costs rows x (longest prompt + longest response, at least 1 each)
    assert microbatch.padded_tokens(1, 2, 0) == 3 and microbatch.padded_tokens(2, 3, 4) == 14
    plan = lambda budget, size=0: [c.tolist() for c in microbatch.plan(rows, attn, 3, size, max_tokens=budget)]
    assert plan(8) == [[1, 3], [0], [5], [2]]  # 1+3: 2 x 4 = 8; 3+0: 3 x 5 = 15; 0+5, 5+2: 2 x 7 = 14
    assert plan(14) == [[1, 3], [0, 5], [2]]  # 1+3+0: 15; 0+5: 14; 0+5+2: 21
    assert plan(21) == [[1, 3, 0], [5, 2]]  # 1+3+0+5: 4 x 7 = 28
    assert plan(1) == [[1], [3], [0], [5], [2]]  # every row alone, over budget or not
    assert plan(100) == [[1, 3, 0, 5, 2]]
    assert plan(100, size=2) == [[1, 3], [0, 5], [2]]  # both limits apply
    assert plan(8, size=1) == [[1], [3], [0], [5], [2]]
    assert [c.tolist() for c in microbatch.plan(rows, attn, 3, 0, sort=False, max_tokens=14)] == [
        [0, 1],
        [2, 3],
        [5],
    ]  # 0+1: 10; 0+1+2: 21; 2+3: 14
    assert microbatch.plan(rows[:0], attn, 3, 0, max_tokens=8) == []


def test_token_budget_is_validated():
    with pytest.raises(ValueError, match=r"model\.max_tokens_per_micro_batch must be >= 1 \(or null\), got 0"):
        RLModule(max_tokens_per_micro_batch=0)


def test_no_grad_passes_by_token_budget(tiny_model):
    """The scorer's plain passes hold at most the budget's padded tokens (or one row) and score
    as one pass does; its shared-prefix passes hold at most that many positions."""
    from cepo.scoring import Scorer
    from tests.test_prefix import _rows

    model, tok = tiny_model
    _, _, rows = _rows(tok)
    shapes = []
    # removed below: the model is shared by the session's tests
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    whole = Scorer(0, share_prefixes=False).logprobs(model, rows)[0]
    for share in (False, True):
        scorer = Scorer(0, share_prefixes=share, shared_len=24, max_tokens=24)  # sharing: 2 packed sequences
        scorer.logprobs(model, rows)  # decides on sharing (with plain passes)
        shapes.clear()
        lp = scorer.logprobs(model, rows)[0]
        assert all(scorer.checked.values()) and bool(scorer.checked) == share
        assert torch.allclose(lp, whole, atol=1e-5)
        assert len(shapes) > 1 and all(n == 1 or n * width <= 24 for n, width in shapes), shapes
        assert any(n > 1 for n, _ in shapes) or share  # the budget packs rows together
    hook.remove()


def test_token_budget_leaves_the_step_unchanged(tmp_path, tiny_dir):
    """Micro-batches of at most 100 padded tokens (and of one row each, with a budget of 1) take the
    same SGD step as one pass over the mini-batch."""
    budget = 100
    passes = {}

    def count(key):
        class Count(L.Callback):
            def on_fit_start(self, tr, pl_module):
                def hook(mod, args, kwargs):
                    if torch.is_grad_enabled():
                        passes.setdefault(key, []).append(tuple(kwargs["input_ids"].shape))

                pl_module.policy.register_forward_pre_hook(hook, with_kwargs=True)

        return Count()

    # plain passes here (the shared-prompt budget: tests/test_scoring.py)
    task = HalfConstant(train_size=200, val_size=8, test_size=8)
    kw = dict(task=task, prompts=8, credit=Uniform(), share_prompts=False)
    plain, module = one_sgd_step(tmp_path / "a", tiny_dir, callbacks=[count("plain")], **kw)
    assert len(passes["plain"]) == 1
    for key, tokens in (("budget", budget), ("one", 1)):
        state, _ = one_sgd_step(
            tmp_path / key, tiny_dir, callbacks=[count(key)], max_tokens_per_micro_batch=tokens, **kw
        )
        for k in plain:
            assert torch.allclose(plain[k], state[k], atol=2e-6), (key, k)
    rows = passes["plain"][0][0]
    assert [n for n, _ in passes["one"]] == [1] * rows
    assert 1 < len(passes["budget"]) < rows and all(n == 1 or n * w <= budget for n, w in passes["budget"])
    initial = RLModule(model_path=str(tiny_dir))
    initial.configure_model()
    assert max(float((plain[k] - initial.policy.state_dict()[k]).abs().max()) for k in plain) > 1e-4
    shared, _ = one_sgd_step(tmp_path / "shared", tiny_dir, **{**kw, "share_prompts": True})
    for k in plain:
        assert torch.allclose(plain[k], shared[k], atol=2e-6), k

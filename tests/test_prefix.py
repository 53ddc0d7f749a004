"""Shared prefixes: the trie layout worked out by hand, and scoring over it equal to plain passes."""

import torch
from transformers import AutoModelForCausalLM

from cepo.scoring import Scorer, prefix
from cepo.scoring.logprobs import token_logprobs
from cepo.teacher import pack_contexts

# three rows; their last tokens (3, 8, 6) predict nothing and get no node
ROWS = [[5, 1, 2, 3], [5, 1, 7, 8], [5, 6, 6]]


def test_layout_by_hand():
    lay = prefix.layout(ROWS, max_len=10)
    # depth-first: 5 (0), 1 (1), 2 (2) | 7 (3) after the common "5 1" | 6 (4) after "5"
    (unit,) = lay.units
    assert unit.tokens == [5, 1, 2, 7, 6]
    assert unit.depths == [0, 1, 2, 2, 1]
    assert unit.ends == [5, 4, 3, 4, 5]  # node 1's descendants are nodes 2 and 3
    assert lay.unit == [0, 0, 0]
    assert lay.nodes == [[0, 1, 2], [0, 1, 3], [0, 4]]
    assert lay.size == 5  # against 3 + 3 + 2 positions row by row


def test_layout_cuts_units_at_max_len_and_keeps_row_order():
    lay = prefix.layout([ROWS[2], ROWS[0], ROWS[1]], max_len=4)
    # rows 1 and 2 (sorted first) fill 4 nodes; row 0 would make 5 and starts a unit of its own
    assert [u.tokens for u in lay.units] == [[5, 1, 2, 7], [5, 6]]
    assert lay.unit == [1, 0, 0]
    assert lay.nodes == [[0, 1], [0, 1, 2], [0, 1, 3]]
    # a row longer than max_len gets a unit of its own; single tokens need no node
    lay = prefix.layout([[1, 2, 3, 4, 5], [9]], max_len=2)
    assert [u.tokens for u in lay.units] == [[1, 2, 3, 4]] and lay.nodes == [[0, 1, 2, 3], []]


def test_unit_inputs_attend_to_ancestors_only():
    lay = prefix.layout(ROWS, max_len=10)
    short = prefix.Unit([4], [0], [1])
    ids, pos, attention = prefix.unit_inputs([*lay.units, short], pad_id=0)
    assert ids.tolist() == [[5, 1, 2, 7, 6], [4, 0, 0, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 2, 1], [0, 0, 0, 0, 0]]
    assert attention.shape == (2, 1, 5, 5)
    assert attention[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],  # 7 follows "5 1", not 2
        [1, 0, 0, 0, 1],  # 6 follows "5"
    ]
    assert attention[1, 0].int().tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]] + [
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ]  # padding attends to itself only


def test_plan_units_by_length_within_budget():
    units = [prefix.Unit([0] * n) for n in (5, 2, 3)]
    assert prefix.plan_units(units, budget=6) == [[1, 2], [0]]  # 2 units x 3 positions, then 5 alone
    assert prefix.plan_units(units, budget=4) == [[1], [2], [0]]
    assert prefix.plan_units(units, budget=0) == [[1, 2, 0]]


def _rows(tok, temperature=0.7):
    """Teacher-like rows: two contexts of one prompt, responses that repeat and branch."""
    enc = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    ctx = [enc(t) for t in ("12+3-4= 11", "12+3-4= 11", "12+3-4= 10", "12+3-4= 10", "7= 7", "7= 7")]
    responses = [enc(t) for t in (" 15-4 = 11", " 15-4 = 10", " 15-4 = 11", " 15-4 = 10", " 7", "")]
    return ctx, responses, pack_contexts(ctx, responses, tok.pad_token_id, temperature, "cpu")


def test_shared_prefix_scores_equal_plain_passes_and_direct_forwards(tiny_model):
    model, tok = tiny_model
    ctx, responses, rows = _rows(tok)
    plain = Scorer(2, share_prefixes=False)
    index = torch.tensor([0, 1, 2, 3, 5])  # row 4 left out, row 5 has no response
    for scorer in (Scorer(0), Scorer(2), Scorer(1, shared_len=8)):
        assert scorer._shared(model, rows, index) is not None  # the shared path runs
        lp, ent = scorer.logprobs(model, rows, index, entropy=True)
        lp0, ent0 = plain.logprobs(model, rows, index, entropy=True)
        assert torch.allclose(lp, lp0, atol=1e-5) and torch.allclose(ent, ent0, atol=1e-5)
        assert lp[4].eq(0).all() and lp[5].eq(0).all() and ent[4].eq(0).all()
        # units of 20 positions hold two rows with the same input each (a chain): nothing to decide
        assert scorer.checked == ({} if scorer.shared_len == 8 else {("llama", "sdpa"): True})
    for i in range(4):  # each row equals a forward of its own context and response
        with torch.no_grad():
            full = torch.tensor([ctx[i] + responses[i]])
            logits = model(full).logits[0, len(ctx[i]) - 1 : -1] / 0.7
        width = len(responses[i])
        assert torch.allclose(lp[i, :width], token_logprobs(logits[None], full[:, len(ctx[i]) :])[0], atol=1e-5)
    # the trie computes the shared prompt and the repeated responses once
    lay = Scorer(0)._shared(model, rows, index)[0]
    assert lay.size < 0.5 * sum(len(c) + len(r) - 1 for c, r in zip(ctx[:4], responses[:4]))


def test_shared_prefixes_with_eager_attention(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    from transformers import AutoTokenizer

    _, _, rows = _rows(AutoTokenizer.from_pretrained(tiny_dir), temperature=1.0)
    scorer = Scorer(0)
    lp = scorer.logprobs(model, rows)[0]
    assert scorer.checked == {("llama", "eager"): True}
    assert torch.allclose(lp, Scorer(0, share_prefixes=False).logprobs(model, rows)[0], atol=1e-5)


class IgnoresPositions(torch.nn.Module):
    """A model that cannot take explicit positions with a custom mask (as ALiBi models compute
    their bias from a 2D mask): sharing must find out and stay off."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, attention_mask, position_ids):
        if attention_mask.dim() == 4:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_sharing_stays_off_where_it_disagrees_with_plain_passes(tiny_model, caplog):
    model, tok = tiny_model
    _, _, rows = _rows(tok)
    broken, scorer = IgnoresPositions(model), Scorer(0)
    lp = scorer.logprobs(broken, rows)[0]
    assert scorer.checked == {("llama", "sdpa"): False}
    assert "disagree" in caplog.text
    assert torch.allclose(lp, Scorer(0, share_prefixes=False).logprobs(model, rows)[0], atol=1e-5)
    assert scorer._shared(broken, rows, torch.arange(6)) is None


def test_sharing_is_decided_on_a_batch_that_branches(tiny_model):
    """Rows that repeat one sequence share it without a branch: each unit is a plain row, right
    even for a model that ignores the positions, so the check waits for a batch that branches."""
    model, tok = tiny_model
    ctx, responses, rows = _rows(tok)
    same = pack_contexts([ctx[0]] * 3, [responses[0]] * 3, tok.pad_token_id, 0.7, "cpu")
    broken, scorer = IgnoresPositions(model), Scorer(0)
    assert scorer._shared(broken, same, torch.arange(3)) is not None and scorer.checked == {}
    lp = scorer.logprobs(broken, same)[0]
    assert torch.allclose(lp, Scorer(0, share_prefixes=False).logprobs(model, same)[0], atol=1e-5)
    scorer.logprobs(broken, rows)
    assert scorer.checked == {("llama", "sdpa"): False}

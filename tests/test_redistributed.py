"""Redistributed credit: hand-computed weights, GRPO's total per rollout, and a run from its YAML."""

import csv
import math

import torch

from cepo.cli import cli_main
from cepo.credit import CreditInputs
from cepo.credit.redistributed import Redistributed
from tests.helpers import fit_args


def _inputs(adv, pos, neg, mask=None):
    pos, neg = torch.tensor(pos).log(), torch.tensor(neg).log()
    mask = torch.ones(pos.shape, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return CreditInputs(torch.tensor(adv), mask, pos_logprobs=pos, neg_logprobs=neg)


def test_two_tokens_by_hand():
    # row 0 (A = +1): Delta = log 2 and 0, w = (2, 1) unclipped -> mean 1.5 -> (4/3, 2/3)
    # row 1 (A = -2): Delta = log 2 and 0, w = exp(-Delta) = (1/2, 1) -> mean 3/4 -> (2/3, 4/3)
    inputs = _inputs([1.0, -2.0], [[0.4, 0.3], [0.4, 0.3]], [[0.2, 0.3], [0.2, 0.3]])
    out = Redistributed(clip=float("inf")).assign(inputs)
    expected = torch.tensor([[4 / 3, 2 / 3], [-2 * 2 / 3, -2 * 4 / 3]])
    assert torch.allclose(out.token_advantages, expected, atol=1e-6)
    # with clip 0.5 row 0's weight 2 is clipped to 1.5: (1.5, 1) / 1.25 = (1.2, 0.8)
    clipped = Redistributed(clip=0.5).assign(inputs)
    assert torch.allclose(clipped.token_advantages[0], torch.tensor([1.2, 0.8]), atol=1e-6)
    assert clipped.clipped[0].tolist() == [True, False]


def test_total_credit_is_grpo_and_sign_is_anchored():
    torch.manual_seed(0)
    mask = torch.rand(6, 7) > 0.2
    mask[:, 0] = True
    pos, neg = torch.rand(6, 7) + 0.05, torch.rand(6, 7) + 0.05
    adv = torch.tensor([1.0, -1.0, 0.5, -0.3, 0.0, 2.0])
    out = Redistributed().assign(CreditInputs(adv, mask, pos_logprobs=pos.log(), neg_logprobs=neg.log()))
    totals = out.token_advantages.sum(1)
    assert torch.allclose(totals, adv * mask.sum(1), atol=1e-5)  # GRPO's credit per rollout
    signs = torch.sign(out.token_advantages[mask])
    assert torch.equal(signs, torch.sign(adv[:, None].expand(6, 7)[mask]))
    assert not out.token_advantages[~mask].any()


def test_equal_teachers_are_grpo():
    inputs = _inputs([1.0, -1.0], [[0.3, 0.6]] * 2, [[0.3, 0.6]] * 2, [[True, True], [True, False]])
    out = Redistributed().assign(inputs)
    assert torch.allclose(out.token_advantages, torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
    assert math.isclose(float(out.weight[0, 0]), 1.0)


def test_fit_from_yaml(tmp_path, tiny_dir):
    """Runs end to end from configs/credit/redistributed.yaml: teacher passes with no beta, the
    weights average 1 over the responses, and each rollout keeps GRPO's total credit."""
    extra = ["--data.task", "tests.helpers.TextParity"]
    cli = cli_main(["fit", *fit_args(tiny_dir, tmp_path, "rd", "credit/redistributed.yaml", extra=extra)])
    assert type(cli.model.credit).__name__ == "Redistributed"
    rows = list(csv.DictReader((tmp_path / "rd" / "v" / "metrics.csv").open()))
    assert "train/beta" not in rows[0]
    deltas = [float(r["credit/correct/abs_delta_mean"]) for r in rows if r.get("credit/correct/abs_delta_mean")]
    assert len(deltas) == 2 and all(d > 0 for d in deltas)  # the teachers disagreed somewhere
    means = [
        float(r[f"credit/{side}/weight_mean"])
        for r in rows
        for side in ("correct", "wrong")
        if r.get(f"credit/{side}/weight_mean")
    ]
    assert len(means) == 4 and all(abs(m - 1.0) < 1e-5 for m in means), means
    last = cli.model.last_credit  # the last training step's evidence and credit
    assert last.inputs.pos_logprobs is not None and last.inputs.neg_logprobs is not None
    totals = last.output.token_advantages.sum(1)  # [N]
    assert torch.allclose(totals, last.inputs.advantages * last.inputs.mask.sum(1), atol=1e-5)
    assert not torch.equal(last.output.token_advantages, last.inputs.advantages[:, None] * last.inputs.mask)

"""HighEntropy credit: hand-computed threshold, GRPO on kept tokens, and a run from its YAML."""

import csv

import pytest
import torch

from cepo.cli import cli_main
from cepo.credit import CreditInputs
from cepo.credit.high_entropy import HighEntropy
from tests.helpers import fit_args


def _inputs():
    # rows 0 and 1 carry advantages; row 2 has A = 0 (its entropies must not move the threshold)
    entropy = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5],
            [0.6, 0.7, 0.8, 0.9, 1.0],
            [9.0, 9.0, 9.0, 9.0, 9.0],
        ]
    )
    mask = torch.ones(3, 5, dtype=torch.bool)
    return CreditInputs(torch.tensor([1.5, -0.5, 0.0]), mask, entropy=entropy)


def test_top_fifth_by_entropy_keeps_grpo_advantage():
    out = HighEntropy(top_fraction=0.2).assign(_inputs())
    # credited entropies 0.1 .. 1.0 (10 tokens): the 0.8 quantile is 0.8 + 0.2 * (0.9 - 0.8) = 0.82,
    # so exactly the two tokens 0.9 and 1.0 (row 1, columns 3 and 4) keep A = -0.5
    expected = torch.zeros(3, 5)
    expected[1, 3:] = -0.5
    assert torch.equal(out.token_advantages, expected)
    assert out.weight[1].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0] and out.weight[0].sum() == 0


def test_direction_anchoring_and_full_fraction_is_grpo():
    inputs = _inputs()
    out = HighEntropy(top_fraction=0.5).assign(inputs)
    adv = inputs.advantages[:, None].expand(3, 5)
    nonzero = out.token_advantages != 0
    assert torch.equal(out.token_advantages[nonzero], adv[nonzero])  # kept tokens: A_i exactly
    assert int(nonzero.sum()) == 5  # half of the 10 credited tokens
    assert torch.equal(HighEntropy(top_fraction=1.0).assign(inputs).token_advantages, adv * (adv != 0))
    masked = CreditInputs(inputs.advantages, torch.zeros(3, 5, dtype=torch.bool), entropy=inputs.entropy)
    assert not HighEntropy().assign(masked).token_advantages.any()  # nothing credited: no error


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_bad_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="top_fraction"):
        HighEntropy(top_fraction=bad)


def test_fit_from_yaml(tmp_path, tiny_dir):
    """The rule runs end to end from configs/credit/high_entropy.yaml: it reads the policy's
    entropy, no teacher, and keeps GRPO's advantage on about the top 20% of credited tokens."""
    args = [
        "fit",
        *fit_args(
            tiny_dir, tmp_path, "he", "credit/high_entropy.yaml", extra=["--data.task", "tests.helpers.TextParity"]
        ),
    ]
    cli = cli_main(args)
    assert type(cli.model.credit).__name__ == "HighEntropy" and cli.model.credit.top_fraction == 0.2
    rows = list(csv.DictReader((tmp_path / "he" / "v" / "metrics.csv").open()))
    assert "train/beta" not in rows[0]  # no mixing coefficient, no beta schedule
    # the token-weight logger's share of kept tokens (weight 1) among the responses, every step
    kept = [
        float(r[f"credit/{side}/weight_mean"])
        for r in rows
        for side in ("correct", "wrong")
        if r.get(f"credit/{side}/weight_mean")
    ]
    assert len(kept) == 4 and all(0.15 <= k <= 0.25 for k in kept), kept
    last = cli.model.last_credit  # the last training step's evidence and credit
    assert last.inputs.entropy is not None and last.inputs.pos_logprobs is None and last.inputs.neg_logprobs is None
    credited = last.inputs.mask & (last.inputs.advantages != 0)[:, None]
    share = (last.output.token_advantages[credited] != 0).float().mean()
    assert 0.2 <= float(share) <= 0.25  # the top 20% by entropy (ties may add a few)

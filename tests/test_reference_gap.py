"""ReferenceGap, a rule that reads a new kind of evidence (``reference``, the initial policy's
log-probs): its provider is found, the module keeps the reference for it, and the weights are
the evidence rule's formula on Delta = log P_ref - log P_S."""

import math

import torch

from cepo.cli import cli_main
from cepo.credit.base import CreditInputs
from cepo.credit.reference_gap import ReferenceGap
from tests.helpers import fit_args


def test_weights_by_hand():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    inputs = CreditInputs(advantages=torch.tensor([1.0, -2.0]), mask=mask)
    inputs.student_logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -0.5, -3.0]])
    inputs.evidence["reference"] = torch.tensor([[-0.5, -2.4, 0.0], [-1.0, -1.5, -2.0]])
    out = ReferenceGap(clip=0.3, beta=0.5).assign(inputs)
    # Delta: [0.5, -0.4, 0] and [0, -1, 1]; w = exp(sign(A) Delta) clipped to [0.7, 1.3]
    w = [[min(math.exp(0.5), 1.3), max(math.exp(-0.4), 0.7)], [1.0, min(math.exp(1.0), 1.3), max(math.exp(-1.0), 0.7)]]
    expected = torch.tensor(
        [[1.0 * (0.5 + 0.5 * w[0][0]), 1.0 * (0.5 + 0.5 * w[0][1]), 0.0], [-2.0 * (0.5 + 0.5 * x) for x in w[1]]]
    )
    assert torch.allclose(out.token_advantages, expected)
    assert ReferenceGap(beta=0.0).needs() == frozenset()


def test_reference_gap_trains_from_its_config(tmp_path, tiny_dir):
    """A short fit with the rule: the module keeps the initial policy for its evidence (no KL
    term). At step 1 the LoRA policy is the initial one (Delta = 0 exactly); after updates the
    evidence moves the token weights."""
    import csv

    args = fit_args(tiny_dir, tmp_path, "gap", "credit/reference_gap.yaml", steps=4, prompts=4)
    extra = ["--data.task", "tests.helpers.TextParity", "--model.optimizer.init_args.lr", "0.02"]
    cli_main(["fit", *args, "--beta_schedule.kind", "constant", "--model.lora", "on", *extra])
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    deltas = {}
    for r in rows:
        for name in ("correct", "wrong"):
            if r.get(f"credit/{name}/abs_delta_mean"):
                deltas.setdefault(int(r["step"]), []).append(float(r[f"credit/{name}/abs_delta_mean"]))
    assert deltas, "no step logged token weights"
    first, *later = sorted(deltas)
    assert first <= 1 and max(deltas[first]) == 0.0  # policy == reference before the first update
    assert later and max(max(deltas[s]) for s in later) > 0

import math

import torch

from cepo.loss import aggregate, clipped_surrogate, k3_kl


def _lp(x):
    return torch.tensor([x], dtype=torch.float).log()


def test_surrogate_hand_computed_cases():
    # ratio 1.5 with A=+1: clipped at 1.28 -> loss -1.28
    # ratio 0.5 with A=-1: clip(0.5)=0.8 -> -min(-0.5, -0.8) = 0.8 ; dual bound 3 -> 0.8
    # ratio 5.0 with A=-1: -min(-5, -1.28) = 5 -> dual clip min(5, 3) = 3
    # ratio 1.0 with A=+2: loss -2
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(5.0), 0.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, -1.0, 2.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, st = clipped_surrogate(new, old, adv, mask, 0.2, 0.28, 3.0)
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8, 3.0, -2.0]]), atol=1e-6)
    assert math.isclose(float(st.clip_frac), 2 / 4)  # tokens 0 and 1
    assert math.isclose(float(st.dual_clip_frac), 1 / 4)
    loss.sum().backward()
    # clipped / dual-clipped tokens carry no gradient; token 3 gets -A * rho = -2
    assert torch.allclose(new.grad, torch.tensor([[0.0, 0.0, 0.0, -2.0]]))


def test_surrogate_masks_padding():
    new = torch.zeros(1, 3, requires_grad=True)
    loss, _ = clipped_surrogate(new, torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[True, False, False]]))
    assert loss.tolist() == [[-1.0, 0.0, 0.0]]


def test_aggregate_accumulation_equals_full_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    mask = torch.rand(4, 5) > 0.3
    tok = logits.square() * mask
    full = aggregate(tok, mask, "token_mean", float(mask.sum()))
    (g_full,) = torch.autograd.grad(full, logits, retain_graph=True)
    parts = sum(aggregate(tok[i : i + 2], mask[i : i + 2], "token_mean", float(mask.sum())) for i in (0, 2))
    (g_acc,) = torch.autograd.grad(parts, logits, retain_graph=True)
    assert torch.allclose(g_full, g_acc)
    assert torch.allclose(full, (tok.sum() / mask.sum()))
    seq = aggregate(tok, mask, "seq_mean", 4.0)
    expected = sum(tok[i].sum() / mask[i].sum().clamp(min=1) for i in range(4)) / 4
    assert torch.allclose(seq, expected)


def test_k3_kl_hand_computed():
    # logp = log .5, ref = log .25: d = log(.5) -> exp(d) - d - 1 = .5 + log 2 - 1
    v = k3_kl(_lp(0.5), _lp(0.25))
    assert math.isclose(float(v), 0.5 + math.log(2) - 1, rel_tol=1e-6)
    assert float(k3_kl(_lp(0.3), _lp(0.3))) == 0.0

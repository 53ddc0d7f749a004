"""Hand-computed cases and the guarantees of docs/algorithms.md §2-§3 for each credit rule."""

import math

import pytest
import torch

from cepo.credit import Contrastive, CreditInputs, EvidenceRatio, HighEntropy, Redistributed, Uniform

INF = float("inf")


def _inputs(adv, student, pos=None, neg=None, mask=None):
    adv = torch.tensor(adv, dtype=torch.float)
    student = torch.tensor(student, dtype=torch.float).log()
    mask = torch.ones(student.shape, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return CreditInputs(
        advantages=adv,
        mask=mask,
        student_logprobs=student,
        pos_logprobs=None if pos is None else torch.tensor(pos, dtype=torch.float).log(),
        neg_logprobs=None if neg is None else torch.tensor(neg, dtype=torch.float).log(),
    )


def _random_inputs(seed=0, n=6, t=9):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(n, generator=g)
    adv[0] = 0.0
    mask = torch.rand(n, t, generator=g) > 0.2
    lp = lambda: torch.log(torch.rand(n, t, generator=g).clamp(min=1e-4))  # noqa: E731
    return CreditInputs(adv, mask, lp(), lp(), lp())


def test_uniform_is_grpo():
    inp = _inputs([2.0, -1.0], [[0.5, 0.5], [0.5, 0.5]], mask=[[True, False], [True, True]])
    assert Uniform()(inp).tolist() == [[2.0, 0.0], [-1.0, -1.0]]


def test_evidence_ratio_hand_computed():
    # Delta = log(.8/.5) = log 1.6. A>0: w = 1.6 -> clipped to 1.5 -> 1*(.5 + .5*1.5) = 1.25
    # A<0: w = 1/1.6 = .625 (inside [.5, 1.5]) -> -1*(.5 + .5*.625) = -.8125
    inp = _inputs([1.0, -1.0], [[0.5], [0.5]], pos=[[0.8], [0.8]])
    out = EvidenceRatio(clip=0.5, beta=0.5)(inp)
    assert torch.allclose(out, torch.tensor([[1.25], [-0.8125]]), atol=1e-6)


def test_contrastive_hand_computed():
    # Delta = log(.6/.2) = log 3. A>0: w = 3 -> 1.5 -> 1.25. A<0: w = 1/3 -> clipped to .5 -> -.75
    # A=2 with clip=inf, beta=.25: 2*(.75 + .25*3) = 3.0
    inp = _inputs([1.0, -1.0], [[0.5], [0.5]], pos=[[0.6], [0.6]], neg=[[0.2], [0.2]])
    out = Contrastive(clip=0.5, beta=0.5)(inp)
    assert torch.allclose(out, torch.tensor([[1.25], [-0.75]]), atol=1e-6)
    inp2 = _inputs([2.0], [[0.5]], pos=[[0.6]], neg=[[0.2]])
    assert torch.allclose(Contrastive(clip=INF, beta=0.25)(inp2), torch.tensor([[3.0]]), atol=1e-5)


@pytest.mark.parametrize("rule", [EvidenceRatio, Contrastive])
@pytest.mark.parametrize("clip", [0.1, 0.5, 0.99, 2.0, INF])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_direction_anchoring(rule, clip, beta):
    inp = _random_inputs(seed=int(clip * 10 if clip != INF else 99) + int(beta * 100))
    out = rule(clip=clip, beta=beta)(inp)
    sign = torch.sign(inp.advantages)[:, None].expand_as(out)
    assert torch.equal(torch.sign(out)[inp.mask], sign[inp.mask])
    assert torch.equal(out[~inp.mask], torch.zeros_like(out[~inp.mask]))


@pytest.mark.parametrize("rule", [Uniform(), EvidenceRatio(), Contrastive(), HighEntropy(), Redistributed()], ids=repr)
def test_no_grad_through_teachers(rule):
    """Training calls ``assign`` (``cepo/module.py``), not the no-grad ``__call__``, so the rule
    itself must return detached tensors (``CreditOutput``): no gradient may reach the teachers or
    the evidence, even when an input still carries a graph."""
    inp = _random_inputs()
    inp.entropy = torch.rand(inp.mask.shape, generator=torch.Generator().manual_seed(1))
    for name in ("advantages", "student_logprobs", "pos_logprobs", "neg_logprobs", "entropy"):
        getattr(inp, name).requires_grad_(True)
    out = rule.assign(inp)
    assert out.token_advantages[inp.mask].ne(0).any()  # a real output, not an empty one
    for name in ("token_advantages", "weight", "delta"):
        value = getattr(out, name)
        assert value is None or (not value.requires_grad and value.grad_fn is None), name


@pytest.mark.parametrize("rule", [EvidenceRatio, Contrastive])
def test_beta_zero_is_grpo_exactly(rule):
    inp = _random_inputs(3)
    assert torch.equal(rule(clip=0.5, beta=0.0)(inp), Uniform()(inp))


def test_neg_equal_student_is_rlsd_exactly():
    inp = _random_inputs(4)
    inp.neg_logprobs = inp.student_logprobs.clone()
    assert torch.equal(Contrastive(0.3, 0.7)(inp), EvidenceRatio(0.3, 0.7)(inp))


def test_filler_neutrality():
    inp = _random_inputs(5)
    inp.neg_logprobs[:, 2] = inp.pos_logprobs[:, 2]  # both teachers agree on token 2
    out = Contrastive(clip=0.5, beta=0.6).assign(inp)
    assert torch.allclose(out.weight[:, 2], torch.ones(6))
    expected = torch.where(inp.mask[:, 2], inp.advantages, torch.zeros(6))
    assert torch.allclose(out.token_advantages[:, 2], expected)


def test_sharpening_condition():
    # A > 0, unclipped: w_CEPO > w_RLSD  iff  P_T-(y_t) < P_S(y_t)
    inp = _random_inputs(6)
    inp.advantages = inp.advantages.abs() + 0.1
    w_cepo = Contrastive(clip=INF, beta=1.0).assign(inp).weight
    w_rlsd = EvidenceRatio(clip=INF, beta=1.0).assign(inp).weight
    m = inp.mask & (inp.neg_logprobs != inp.student_logprobs)
    assert torch.equal((w_cepo > w_rlsd)[m], (inp.neg_logprobs < inp.student_logprobs)[m])


@pytest.mark.parametrize("clip", [0.1, 0.5])
def test_clip_bounds(clip):
    inp = _random_inputs(7)
    beta = 0.8
    out = Contrastive(clip=clip, beta=beta)(inp)
    a = inp.advantages[:, None].expand_as(out)
    ok = inp.mask & (a != 0)
    scale = out[ok] / a[ok]
    assert scale.min() >= (1 - beta) + beta * (1 - clip) - 1e-6
    assert scale.max() <= (1 - beta) + beta * (1 + clip) + 1e-6
    clipped = Contrastive(clip=clip, beta=beta).assign(inp).clipped
    assert clipped.any()  # random evidence this wide must hit the bounds somewhere


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match="clip"):
        Contrastive(clip=0.0)
    with pytest.raises(ValueError, match="beta"):
        EvidenceRatio(beta=1.5)


def test_missing_teacher_tensors_is_an_error():
    inp = _random_inputs()
    inp.neg_logprobs = None
    with pytest.raises(ValueError, match="neg_logprobs"):
        Contrastive()(inp)


def test_weight_is_exp_signed_delta():
    inp = _inputs([1.0, -1.0], [[0.5], [0.5]], pos=[[0.4], [0.4]], neg=[[0.1], [0.1]])
    out = Contrastive(clip=INF, beta=1.0).assign(inp)
    assert math.isclose(float(out.weight[0, 0]), 4.0, rel_tol=1e-5)
    assert math.isclose(float(out.weight[1, 0]), 0.25, rel_tol=1e-5)


@pytest.mark.parametrize("rule", [EvidenceRatio, Contrastive])
def test_beta_zero_needs_no_teacher_tensors(rule):
    """Once the schedule reaches beta = 0 the module skips the teacher passes: no error, GRPO."""
    inp = _random_inputs(8)
    inp.pos_logprobs = inp.neg_logprobs = None
    r = rule(clip=0.5, beta=0.0)
    assert r.needs() == frozenset()
    assert torch.equal(r(inp), Uniform()(inp))

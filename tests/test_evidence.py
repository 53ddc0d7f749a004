"""cepo.evidence: the registry (every name a rule reads has a provider, an unknown one is an
error that names it, a provider registered by a new file is found without any other edit), and
gather: exactly the evidence a rule needs, on the rows that carry credit, each equal to an
independent computation (a plain forward pass per row)."""

from itertools import combinations

import pytest
import torch

from cepo import evidence
from cepo.credit import ENTROPY, EVIDENCE, NEG, POS, STUDENT, CreditAssigner, CreditInputs
from cepo.credit.base import uniform_output
from cepo.evidence import gather
from cepo.module import RLModule
from cepo.policy import PolicyRef
from cepo.scoring import Scorer
from cepo.teacher import Live, TeacherContexts
from tests.helpers import make_batch, plain_logprobs


def test_every_built_in_kind_has_a_provider():
    assert set(EVIDENCE) <= set(evidence.PROVIDERS)
    evidence.check(EVIDENCE)  # no error


class ReadsSomethingNew(CreditAssigner):
    reads = frozenset({"student", "tea_leaves"})

    def assign(self, inputs: CreditInputs):
        return uniform_output(inputs)


def test_an_unknown_evidence_name_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"model\.credit \(ReadsSomethingNew\) reads unknown evidence 'tea_leaves'"):
        RLModule(credit=ReadsSomethingNew())
    with pytest.raises(ValueError, match="unknown evidence 'tea_leaves'"):
        evidence.gather(frozenset({"tea_leaves"}), *([None] * 6))


def test_a_registered_provider_is_found_and_its_resources_are_kept():
    class TeaLeaves(evidence.Provider):
        def __call__(self, source, needs):
            source.inputs.evidence["tea_leaves"] = source.inputs.mask.float()

    try:
        evidence.register(TeaLeaves(names=("tea_leaves",), resources=frozenset({"reference"})))
        RLModule(credit=ReadsSomethingNew())  # no error now
        assert evidence.resources({"tea_leaves", "student"}) == {"reference"}
        with pytest.raises(ValueError, match="provided twice"):
            evidence.register(evidence.PROVIDERS["pos"].__class__(names=("tea_leaves",)))
    finally:
        evidence.PROVIDERS.pop("tea_leaves", None)


# -- gather: what each kind computes ---------------------------------------------------------------
ADV = torch.tensor([0.7, -0.7, 0.0, 0.0])  # group 0 carries credit, group 1 (two correct rollouts) none


class CountingScorer(Scorer):
    """The micro-batched scorer, counting its policy passes."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def logprobs(self, *args, **kwargs):
        self.calls += 1
        return super().logprobs(*args, **kwargs)


def _setup(tiny_model):
    model, tok = tiny_model
    # group 0: a right and a wrong answer; group 1: both right (A = 0, no evidence needed)
    batch = make_batch(
        tok, ["1+1=", "2+2="], ["2", "4"], [" 2", " 3", " 4", " 4"], [1, 0, 1, 1], ["2", "3", "4", "4"], 2
    )
    teacher = TeacherContexts()
    teacher.setup(PolicyRef(None, tok, ""))
    weights = Live()
    weights.setup(model)
    return model, batch, teacher, weights


def test_student_logprobs_are_a_plain_forward_on_credited_rows_only(tiny_model):
    model, batch, teacher, weights = _setup(tiny_model)
    inputs = gather(frozenset({STUDENT}), batch, ADV, model, Scorer(0), teacher, weights)
    expected = plain_logprobs(model, batch)  # each row alone, unpadded
    mask = batch.response_mask
    assert torch.allclose(inputs.student_logprobs[:2][mask[:2]], expected[:2][mask[:2]], atol=1e-5)
    assert not inputs.student_logprobs[2:].any()  # A = 0: no pass for these rows
    assert inputs.advantages is ADV and torch.equal(inputs.mask, mask)


def test_entropy_is_the_next_token_entropy_by_hand(tiny_model):
    model, batch, teacher, weights = _setup(tiny_model)
    inputs = gather(frozenset({ENTROPY}), batch, ADV, model, Scorer(0), teacher, weights)
    prompt = batch.provenance.prompt_ids[0]
    for row in (0, 1):
        response = batch.provenance.response_ids[row]
        ids = torch.tensor([list(prompt) + list(response)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
        by_hand = -(logp.exp() * logp).sum(-1)  # [len(response)]
        assert torch.allclose(inputs.entropy[row, : len(response)], by_hand, atol=1e-5)
    assert not inputs.entropy[2:].any()


def test_old_logprobs_are_reused_instead_of_another_pass(tiny_model):
    model, batch, teacher, weights = _setup(tiny_model)
    old = torch.full(batch.response_mask.shape, -1.5)
    scorer = CountingScorer()
    inputs = gather(frozenset({STUDENT}), batch, ADV, model, scorer, teacher, weights, old_logprobs=old)
    assert inputs.student_logprobs is old and scorer.calls == 0
    inputs = gather(frozenset({STUDENT, ENTROPY}), batch, ADV, model, scorer, teacher, weights, old_logprobs=old)
    assert inputs.student_logprobs is old and scorer.calls == 1  # one pass, for the entropy alone


def test_teacher_logprobs_condition_on_the_answer(tiny_model):
    """``c+`` shows the verified answer, ``c-`` the peer's wrong one: the two teachers score the
    same tokens differently, and neither equals the student."""
    model, batch, teacher, weights = _setup(tiny_model)
    inputs = gather(frozenset({POS, NEG, STUDENT}), batch, ADV, model, Scorer(0), teacher, weights)
    mask = batch.response_mask[:2]
    pos, neg, student = inputs.pos_logprobs[:2][mask], inputs.neg_logprobs[:2][mask], inputs.student_logprobs[:2][mask]
    assert inputs.has_negative[:2].tolist() == [True, True]
    assert not torch.allclose(pos, neg) and not torch.allclose(pos, student)
    assert not inputs.pos_logprobs[2:].any() and not inputs.neg_logprobs[2:].any()
    assert set(inputs.contexts) == {0}  # the teachers' prompts, for the credited group only


NEEDS = [frozenset(c) for n in range(len(EVIDENCE) + 1) for c in combinations(EVIDENCE, n)]


@pytest.mark.parametrize("needs", NEEDS, ids=lambda s: "+".join(sorted(s)) or "nothing")
def test_exactly_the_evidence_asked_for(tiny_model, needs):
    """Every subset of the evidence kinds: each one asked for is there, nothing else is computed
    (the student log-probs come along with the entropy, whose pass yields them; ``c-`` alone
    needs no ``c+`` pass)."""
    model, batch, teacher, weights = _setup(tiny_model)
    scorer = CountingScorer()
    inputs = gather(needs, batch, ADV, model, scorer, teacher, weights)
    student = STUDENT in needs or ENTROPY in needs
    assert (inputs.student_logprobs is not None) == student
    assert (inputs.entropy is not None) == (ENTROPY in needs)
    assert (inputs.pos_logprobs is not None) == (POS in needs)
    assert (inputs.neg_logprobs is not None) == (NEG in needs)
    assert (inputs.has_negative is not None) == (NEG in needs)
    if not needs & {POS, NEG}:  # (teacher passes go through the scorer too)
        assert scorer.calls == int(student)  # one policy pass, even for both STUDENT and ENTROPY

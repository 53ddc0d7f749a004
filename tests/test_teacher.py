"""Teacher passes: context building, c- choice, and log-probs equal to a direct forward."""

import torch

from cepo.credit import Contrastive, CreditInputs, EvidenceRatio
from cepo.logprobs import token_logprobs
from cepo.teacher import TeacherPass, choose_negative
from tests.helpers import make_batch


def test_choose_negative_skips_missing_and_equal_answers():
    # rollout 1 has no answer, rollout 2 repeats the right answer, rollout 3 is wrong
    assert choose_negative([1, 0, 0, 0], [True, False, False, False], ["5", None, "5", "7"], "5") == 3
    assert choose_negative([1, 0], [True, False], ["5", None], "5") is None
    # lowest reward first
    assert choose_negative([0.5, 0.2], [False, False], ["3", "4"], "5") == 1


def test_teacher_logprobs_equal_direct_forward(tiny_model):
    model, tok = tiny_model
    teacher = TeacherPass(template="raw")
    teacher.setup(model, tok)
    batch = make_batch(tok, ["12+3-4="], ["11"], [" 15-4 = 11", " 15-4 = 10"], [1.0, 0.0], ["11", "10"], 2)
    inputs = CreditInputs(torch.zeros(2), batch.response_mask, torch.zeros(batch.response_mask.shape))
    teacher.fill(inputs, batch, Contrastive())
    for row, feedback, key in ((0, "11", "pos_logprobs"), (1, "10", "neg_logprobs")):
        text = "12+3-4= " + feedback  # the raw template: prompt, space, answer
        ctx = tok(text, add_special_tokens=False).input_ids
        full = torch.tensor([ctx + batch.response_ids[row]])
        with torch.no_grad():
            logits = model(full).logits[0, len(ctx) - 1 : -1]
        direct = token_logprobs(logits[None], full[:, len(ctx) :])[0]
        got = getattr(inputs, key)[row, : len(batch.response_ids[row])]
        assert torch.allclose(got, direct, atol=1e-5), key
    assert inputs.has_negative.tolist() == [True, True]
    assert teacher.last_contexts == [("11", "10")]


def test_no_negative_falls_back_to_student(tiny_model):
    model, tok = tiny_model
    teacher = TeacherPass()
    teacher.setup(model, tok)
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " x"], [1.0, 0.0], ["2", None], 2)
    student = torch.randn(batch.response_mask.shape)
    inputs = CreditInputs(torch.zeros(2), batch.response_mask, student)
    teacher.fill(inputs, batch, Contrastive())
    assert torch.equal(inputs.neg_logprobs, student)
    assert inputs.has_negative.tolist() == [False, False]


def test_rlsd_needs_only_positive_pass(tiny_model):
    model, tok = tiny_model
    teacher = TeacherPass()
    teacher.setup(model, tok)
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " 3"], [1.0, 0.0], ["2", "3"], 2)
    inputs = CreditInputs(torch.zeros(2), batch.response_mask, torch.zeros(batch.response_mask.shape))
    teacher.fill(inputs, batch, EvidenceRatio())
    assert inputs.pos_logprobs is not None and inputs.neg_logprobs is None


def test_hint_template_and_feedback_sources(tiny_model):
    model, tok = tiny_model
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " 3"], [1.0, 0.0], ["2", "3"], 2)
    t = TeacherPass(template="hint", feedback="rollout")
    t.setup(model, tok)
    fb = t.group_feedback(batch, 0)
    assert (fb.pos, fb.neg) == ("2", "3")
    assert "Here is a reference solution:\n2" in tok.decode(t.context_ids("1+1=", fb.pos))
    t2 = TeacherPass(feedback="answer_rollout")
    t2.setup(model, tok)
    assert t2.group_feedback(batch, 0).neg == "3"
    t3 = TeacherPass(feedback="first_k", k=1)
    t3.setup(model, tok)
    assert t3.group_feedback(batch, 0).pos == ""  # first token of " 2" is the space, stripped


def test_teacher_weight_modes(tiny_model):
    model, tok = tiny_model
    import copy

    student = copy.deepcopy(model)
    ema = TeacherPass(weights="ema", ema_tau=0.5)
    ema.setup(student, tok)
    before = [p.clone() for p in ema.copy.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.on_step_end(1)
    for b, t, s in zip(before, ema.copy.parameters(), student.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)
    synced = TeacherPass(weights="synced", sync_every=2)
    synced.setup(student, tok)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    synced.on_step_end(1)
    assert not torch.equal(next(synced.copy.parameters()), next(student.parameters()))
    synced.on_step_end(2)
    assert torch.equal(next(synced.copy.parameters()), next(student.parameters()))
    assert not any(p.requires_grad for p in synced.copy.parameters())


def test_subset_of_rows_with_shorter_responses(tiny_model):
    """Scoring only some rows, whose responses are shorter than the batch's longest."""
    model, tok = tiny_model
    teacher = TeacherPass()
    teacher.setup(model, tok)
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " 3 = 3 = 3 = 3"], [1.0, 0.0], ["2", "3"], 2)
    inputs = CreditInputs(torch.zeros(2), batch.response_mask, torch.zeros(batch.response_mask.shape))
    teacher.fill(inputs, batch, Contrastive(), rows=torch.tensor([0]))
    assert inputs.pos_logprobs.shape == batch.response_mask.shape
    assert torch.equal(inputs.pos_logprobs[1], torch.zeros(batch.response_mask.shape[1]))
    assert inputs.pos_logprobs[0, :2].ne(0).all()


def test_length_grouped_teacher_passes_equal_one_pass(tiny_model):
    """Micro-batches grouped by length and trimmed give the same scores and logits as one pass."""
    model, tok = tiny_model
    contexts = [tok(t, add_special_tokens=False).input_ids for t in ("1+2= 3", "12+30-4= 38", "7= 7", "5+5= 10")]
    responses = [tok(t, add_special_tokens=False).input_ids for t in (" 3", " 42-4 = 38 and more", " 7", " 10 =")]
    whole, grouped = TeacherPass(micro_batch_size=0), TeacherPass(micro_batch_size=2)
    for t in (whole, grouped):
        t.setup(model, tok)
    a, b = whole.score(contexts, responses), grouped.score(contexts, responses)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert bool((a != 0).any(1).all())  # every row was scored
    la, lb = whole.logits(contexts, responses, 0.7), grouped.logits(contexts, responses, 0.7)
    assert la.shape == lb.shape and torch.allclose(la, lb, atol=1e-5)
    # the two longest rows share a pass; the short ones are trimmed to their own width
    assert [(r.tolist(), w) for r, w in grouped._plan(*_packed(grouped, contexts, responses))] == [
        ([2, 0], 2),
        ([3, 1], 19),  # " 42-4 = 38 and more" is 19 characters
    ]


def _packed(teacher, contexts, responses):
    ids, attn, start, mask = teacher._pack(contexts, responses)
    return attn, start, mask

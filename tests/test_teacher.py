"""Teacher contexts and weights, the evidence a rule asks for, and the shared scoring loop: context
building, c- choice, and log-probs equal to a direct forward."""

import copy

import torch

from cepo.credit import ENTROPY, NEG, POS, EvidenceRatio
from cepo.evidence import gather
from cepo.policy import PolicyRef
from cepo.prompts.templates import fill
from cepo.scoring import Scorer
from cepo.scoring.logprobs import token_logprobs
from cepo.teacher import EMA, Base, Live, Synced, TeacherContexts, choose_negative, pack_contexts
from tests.helpers import make_batch


def test_choose_negative_skips_missing_and_equal_answers():
    # rollout 1 has no answer, rollout 2 repeats the right answer, rollout 3 is wrong
    assert choose_negative([1, 0, 0, 0], [True, False, False, False], ["5", None, "5", "7"], "5") == 3
    assert choose_negative([1, 0], [True, False], ["5", None], "5") is None
    # lowest reward first
    assert choose_negative([0.5, 0.2], [False, False], ["3", "4"], "5") == 1


def contexts(tok, **kwargs) -> TeacherContexts:
    t = TeacherContexts(**kwargs)
    t.setup(PolicyRef(None, tok, ""))
    return t


def live(model) -> Live:
    w = Live()
    w.setup(model)
    return w


def direct_logprobs(model, context_ids, response_ids):
    """Log-probs of ``response_ids`` after ``context_ids``: one plain forward, no packing."""
    full = torch.tensor([context_ids + response_ids])
    with torch.no_grad():
        logits = model(full).logits[0, len(context_ids) - 1 : -1]
    return token_logprobs(logits[None], full[:, len(context_ids) :])[0]


def test_teacher_logprobs_equal_direct_forward(tiny_model):
    model, tok = tiny_model
    teacher = contexts(tok, template="raw")
    batch = make_batch(tok, ["12+3-4="], ["11"], [" 15-4 = 11", " 15-4 = 10"], [1.0, 0.0], ["11", "10"], 2)
    scores = teacher.score(batch, torch.arange(2), True, True, live(model), Scorer(0))
    for row, feedback, got in ((0, "11", scores.pos), (1, "10", scores.neg)):
        ctx = tok("12+3-4= " + feedback, add_special_tokens=False).input_ids  # raw: prompt, space, answer
        direct = direct_logprobs(model, ctx, batch.provenance.response_ids[row])
        assert torch.allclose(got[row, : len(batch.provenance.response_ids[row])], direct, atol=1e-5)
    assert scores.has_negative.tolist() == [True, True]
    assert teacher.last_contexts == [("11", "10")]


def test_no_negative_falls_back_to_student(tiny_model):
    model, tok = tiny_model
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " x"], [1.0, 0.0], ["2", None], 2)
    adv = torch.tensor([0.7, -0.7])
    inputs = gather(frozenset({POS, NEG}), batch, adv, model, Scorer(0), contexts(tok), live(model))
    student, _ = Scorer(0).logprobs(model, batch.packed())
    assert torch.allclose(inputs.neg_logprobs, student, atol=1e-6) and inputs.neg_logprobs.ne(0).any()
    assert inputs.has_negative.tolist() == [False, False]
    assert inputs.student_logprobs is None  # not asked for: computed only where the fallback needed it


def test_evidence_is_what_the_rule_needs(tiny_model):
    model, tok = tiny_model
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " 3"], [1.0, 0.0], ["2", "3"], 2)
    adv = torch.tensor([0.7, -0.7])
    args = (batch, adv, model, Scorer(0), contexts(tok), live(model))
    rlsd = gather(EvidenceRatio().needs(), *args)
    assert rlsd.pos_logprobs is not None and rlsd.neg_logprobs is None and rlsd.student_logprobs is not None
    assert rlsd.entropy is None
    off = EvidenceRatio(beta=0.0)
    assert off.needs() == frozenset()  # beta 0 is GRPO: no evidence at all
    bare = gather(off.needs(), *args)
    assert bare.pos_logprobs is None and bare.student_logprobs is None
    ent = gather(frozenset({ENTROPY}), *args)
    assert ent.entropy is not None and ent.student_logprobs is not None and ent.pos_logprobs is None
    # the entropy of the policy's next-token distribution at each response token
    _, expected = Scorer(0).logprobs(model, batch.packed(), entropy=True)
    assert torch.allclose(ent.entropy, expected) and bool((ent.entropy[batch.response_mask] > 0).all())


def test_hint_template_and_feedback_sources(tiny_model):
    _, tok = tiny_model
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " 3"], [1.0, 0.0], ["2", "3"], 2)
    t = contexts(tok, template="hint", feedback="rollout")
    fb = t.group_feedback(batch, 0)
    assert (fb.pos, fb.neg) == ("2", "3")
    assert "Here is a reference solution:\n2" in tok.decode(t.context_ids(batch, 0, fb.pos))
    assert contexts(tok, feedback="answer_rollout").group_feedback(batch, 0).neg == "3"
    # first token of " 2" is the space, stripped
    assert contexts(tok, feedback="first_k", k=1).group_feedback(batch, 0).pos == ""


def test_templates_keep_literal_braces():
    text = fill("{prompt} Put it in \\boxed{}. {feedback}", prompt="x={feedback}", feedback="7")
    assert text == "x={feedback} Put it in \\boxed{}. 7"  # values are not expanded again


def test_teacher_weight_strategies(tiny_model):
    model, _ = tiny_model
    import copy

    student = copy.deepcopy(model)
    ema = EMA(tau=0.5)
    ema.setup(student)
    before = [p.clone() for p in ema.copy.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.on_step_end(1)
    for b, t, s in zip(before, ema.copy.parameters(), student.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)
    synced = Synced(every=2)
    synced.setup(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    synced.on_step_end(1)
    assert not torch.equal(next(synced.copy.parameters()), next(student.parameters()))
    synced.on_step_end(2)
    assert torch.equal(next(synced.copy.parameters()), next(student.parameters()))
    assert not any(p.requires_grad for p in synced.copy.parameters())
    with live(student).model() as m:
        assert m is student


def test_base_weights_disable_the_adapter_or_copy(tiny_model):
    model, _ = tiny_model
    import copy

    from peft import LoraConfig, get_peft_model

    plain = copy.deepcopy(model)
    base = Base()
    base.setup(plain)
    with torch.no_grad():
        next(plain.parameters()).add_(1.0)
    with base.model() as m:
        assert m is not plain and not torch.equal(next(m.parameters()), next(plain.parameters()))
    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    lora_base = Base()
    lora_base.setup(adapted)
    assert lora_base.copy is None  # no copy: the adapter is switched off
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), lora_base.model() as m:
        off = m(ids).logits
    with torch.no_grad():
        on = adapted(ids).logits
    assert torch.allclose(off, model(ids).logits, atol=1e-5) and not torch.allclose(on, off, atol=1e-3)


def test_subset_of_rows_with_shorter_responses(tiny_model):
    """Scoring only some rows, whose responses are shorter than the batch's longest."""
    model, tok = tiny_model
    batch = make_batch(tok, ["1+1="], ["2"], [" 2", " 3 = 3 = 3 = 3"], [1.0, 0.0], ["2", "3"], 2)
    scores = contexts(tok).score(batch, torch.tensor([0]), True, True, live(model), Scorer(0))
    assert scores.pos.shape == batch.response_mask.shape
    assert torch.equal(scores.pos[1], torch.zeros(batch.response_mask.shape[1]))
    assert scores.pos[0, :2].ne(0).all()


def test_length_grouped_passes_equal_one_pass(tiny_model):
    """Micro-batches grouped by length and trimmed give the same scores and logits as one pass."""
    model, tok = tiny_model
    ctx = [tok(t, add_special_tokens=False).input_ids for t in ("1+2= 3", "12+30-4= 38", "7= 7", "5+5= 10")]
    responses = [tok(t, add_special_tokens=False).input_ids for t in (" 3", " 42-4 = 38 and more", " 7", " 10 =")]
    rows = pack_contexts(ctx, responses, tok.pad_token_id, 0.7, "cpu")
    whole, grouped = Scorer(0), Scorer(2)
    a, b = whole.logprobs(model, rows)[0], grouped.logprobs(model, rows)[0]
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert bool((a != 0).any(1).all())  # every row was scored
    for i in range(4):  # and each equals a plain forward of its own context and response
        width = len(responses[i])
        with torch.no_grad():
            full = torch.tensor([ctx[i] + responses[i]])
            logits = model(full).logits[0, len(ctx[i]) - 1 : -1] / 0.7
        assert torch.allclose(a[i, :width], token_logprobs(logits[None], full[:, len(ctx[i]) :])[0], atol=1e-5)
    la, lb = whole.logits(model, rows), grouped.logits(model, rows)
    assert la.shape == lb.shape and torch.allclose(la, lb, atol=1e-5)
    # the two longest rows share a pass; the short ones are trimmed to their own width
    assert [(r.tolist(), w) for r, w, _ in grouped.passes(model, rows, grouped.plan(rows))] == [
        ([2, 0], 2),
        ([3, 1], 19),  # " 42-4 = 38 and more" is 19 characters
    ]


def test_logits_keep_a_bfloat16_models_dtype_and_values(tiny_model):
    """A bfloat16 teacher's logits are not copied to float32 (the largest tensor of a distillation
    step): they come back in bfloat16, equal to the model's own forward, and 0 past each response."""
    model, tok = tiny_model
    model = copy.deepcopy(model).to(torch.bfloat16)
    ctx = [tok(t, add_special_tokens=False).input_ids for t in ("1+2= 3", "12+30-4= 38")]
    responses = [tok(t, add_special_tokens=False).input_ids for t in (" 3", " 42-4 = 38")]
    rows = pack_contexts(ctx, responses, tok.pad_token_id, 1.0, "cpu")
    out = Scorer(0).logits(model, rows)
    assert out.dtype == torch.bfloat16 and out.shape[:2] == rows.mask.shape
    for i in range(2):
        width = len(responses[i])
        with torch.no_grad():
            full = torch.tensor([ctx[i] + responses[i]])
            plain = model(full).logits[0, len(ctx[i]) - 1 : -1]
        assert torch.allclose(out[i, :width].float(), plain.float(), atol=2e-2)
        assert bool((out[i, width:] == 0).all())

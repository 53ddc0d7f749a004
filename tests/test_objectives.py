"""Objectives beyond the surrogate: divergences by hand, the leak, SDPO/OPSD/HDPO rows, CIPO
prompts, and exact gradient accumulation through the module."""

import csv
import math

import pytest
import torch

from cepo.bases.tiny import char_tokenizer
from cepo.cli import cli_main
from cepo.credit import Contrastive, CreditInputs
from cepo.loss import clipped_surrogate
from cepo.module import RLModule
from cepo.objectives import CIPO, HDPO, OPSD, SDPO, MicroBatch
from cepo.objectives.cipo import choose_failures
from cepo.objectives.divergence import full_vocab_jsd, generalized_jsd, topk_tail_jsd
from cepo.policy import PolicyRef
from cepo.rollout.batch import concat
from cepo.rollout.datamodule import RolloutDataModule
from tests.helpers import TextParity, fit_args, make_batch, one_sgd_step, trainer


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def logp(p):
    return torch.tensor(p, dtype=torch.float64).log()


# -- divergences against hand computation ---------------------------------------------------
@pytest.mark.parametrize("b", [0.0, 0.25, 0.5, 1.0])
def test_generalized_jsd_hand_computed(b):
    s, t = [0.5, 0.3, 0.2], [0.1, 0.6, 0.3]
    if b == 0.0:
        expected = kl(t, s)  # forward KL
    elif b == 1.0:
        expected = kl(s, t)  # reverse KL
    else:
        m = [(1 - b) * x + b * y for x, y in zip(s, t)]
        expected = b * kl(t, m) + (1 - b) * kl(s, m)
    got = generalized_jsd(logp(s), logp(t), b)
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_jsd_is_zero_for_equal_distributions_and_symmetric_at_half():
    s, t = logp([0.7, 0.2, 0.1]), logp([0.2, 0.2, 0.6])
    assert float(generalized_jsd(s, s, 0.5)) == pytest.approx(0.0, abs=1e-12)
    assert float(generalized_jsd(s, t, 0.5)) == pytest.approx(float(generalized_jsd(t, s, 0.5)), abs=1e-12)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        generalized_jsd(s, t, 1.5)


def test_topk_tail_hand_computed():
    # student top-1 is token 0 (0.6): buckets {0, tail}: student [0.6, 0.4], teacher [0.2, 0.8]
    s = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64).log()
    t = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).log()
    m = [0.5 * 0.6 + 0.5 * 0.2, 0.5 * 0.4 + 0.5 * 0.8]
    expected = 0.5 * kl([0.2, 0.8], m) + 0.5 * kl([0.6, 0.4], m)
    assert float(topk_tail_jsd(s, t, k=1, alpha=0.5)) == pytest.approx(expected, abs=1e-6)  # float32


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_topk_tail_equals_full_jsd_when_k_covers_vocab(alpha):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    full = full_vocab_jsd(student, teacher, alpha)
    for k in (11, 100):
        assert torch.allclose(topk_tail_jsd(student, teacher, k, alpha), full, atol=1e-5)
    assert not torch.allclose(topk_tail_jsd(student, teacher, 2, alpha), full, atol=1e-3)


def test_sdpo_importance_weight_is_capped():
    obj = SDPO(alpha=0.5, top_k=3, is_cap=2.0)
    logits = torch.randn(2, 4, 6)
    teacher = torch.randn(2, 4, 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    old = torch.zeros(2, 4)
    lp = torch.tensor([[math.log(3.0)] * 4, [math.log(0.5)] * 4])  # ratios 3 (capped to 2) and 0.5
    mb = MicroBatch(None, slice(0, 2), logits, lp, old, mask)
    got = obj.divergence(mb, torch.arange(2), teacher)
    jsd = topk_tail_jsd(logits, teacher, 3, 0.5)
    assert torch.allclose(got[0], 2.0 * jsd[0]) and torch.allclose(got[1], 0.5 * jsd[1])


# -- the leak -------------------------------------------------------------------------------
def _grads(teacher_logits, sampled=0):
    """Gradients on the student's logits at one position: OPSD's JSD and CEPO's surrogate."""
    student = torch.tensor([[[1.0, 0.5, -0.3, 0.2, -1.0]]], requires_grad=True)
    full_vocab_jsd(student, teacher_logits, 0.5).sum().backward()
    g_opsd = student.grad.clone()
    student.grad = None
    lp = torch.log_softmax(student, -1)[..., sampled]  # [1, 1]
    pos = torch.log_softmax(teacher_logits, -1)[..., sampled]
    neg = torch.full_like(pos, math.log(0.1))
    mask = torch.ones(1, 1, dtype=torch.bool)
    inputs = CreditInputs(torch.tensor([1.0]), mask, lp.detach(), pos, neg)
    adv = Contrastive(clip=10.0, beta=1.0)(inputs)
    loss, _ = clipped_surrogate(lp, lp.detach(), adv, mask)
    loss.sum().backward()
    return g_opsd, student.grad.clone(), torch.softmax(student.detach(), -1)


def test_opsd_gradient_carries_teacher_preferences_over_unsampled_tokens_cepo_does_not():
    teacher = torch.tensor([[[0.3, 2.0, -1.0, 0.1, 0.5]]])
    swapped = teacher[..., [0, 2, 1, 3, 4]]  # swap two *unsampled* tokens: P_T(y=0) unchanged
    g_opsd, g_cepo, p = _grads(teacher)
    g_opsd2, g_cepo2, _ = _grads(swapped)
    # OPSD: the teacher's view of tokens 1 and 2 changes the student's update on them
    assert not torch.allclose(g_opsd, g_opsd2, atol=1e-4)
    # CEPO: identical update; it sees only P_T(y_t) of the sampled token
    assert torch.allclose(g_cepo, g_cepo2, atol=1e-7)
    # and on unsampled logits CEPO's gradient is the softmax normaliser's, proportional to p_S
    ratio = g_cepo[0, 0, 1:] / p[0, 0, 1:]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-6)
    ratio_opsd = g_opsd[0, 0, 1:] / p[0, 0, 1:]
    assert not torch.allclose(ratio_opsd, ratio_opsd[0].expand_as(ratio_opsd), atol=1e-3)


# -- which rows get what --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def group_batch(tok, correct, prompts=("1+2=", "4+4="), answers=("4242", "4242"), g=4):
    responses = [f" {'ok' if c else 'bad'}{i}" for i, c in enumerate(correct)]
    rewards = [1.0 if c else 0.0 for c in correct]
    return make_batch(tok, list(prompts), list(answers), responses, rewards, [None] * len(correct), g)


def test_sdpo_demonstrations_are_other_successes(tok):
    # group 0: rows 1 and 3 succeed; group 1: only row 6 succeeds
    batch = group_batch(tok, [False, True, False, True, False, False, True, False])
    obj = SDPO()
    obj.policy = PolicyRef(None, tok, "")
    fb = obj.feedback(batch)
    assert fb[0][1] == "ok1" and fb[1][1] == "ok3" and fb[2][1] == "ok3" and fb[3][1] == "ok1"
    assert 6 not in fb  # its only success is itself
    assert {4, 5, 7} <= set(fb) and all(fb[r][1] == "ok6" for r in (4, 5, 7))
    assert all(fb[r][0] == r // 4 for r in fb)  # each row's own prompt


def test_sdpo_answer_feedback_uses_the_demonstrations_answer(tok):
    batch = group_batch(tok, [False, True, False, True, False, False, True, False])
    batch = batch.with_provenance(extracted=[None, "7", None, "9", None, None, "5", None])
    obj = SDPO(feedback_source="answer")
    obj.policy = PolicyRef(None, tok, "")
    fb = obj.feedback(batch)
    assert fb[0][1] == "7" and fb[1][1] == "9" and fb[4][1] == "5" and 6 not in fb


def test_sdpo_skips_groups_without_success(tok):
    obj = SDPO()
    obj.policy = PolicyRef(None, tok, "")
    assert obj.feedback(group_batch(tok, [False] * 8)) == {}


def test_opsd_covers_every_rollout_with_the_solution(tok):
    batch = group_batch(tok, [False, True, False, True, False, False, True, False])
    batch = batch.with_provenance(solutions=[" 3", ""])
    fb = OPSD().feedback(batch)
    assert sorted(fb) == list(range(8))
    assert fb[0] == (0, "3") and fb[5] == (1, "4242")  # no solution: the answer
    assert OPSD(feedback_source="answer").feedback(batch)[0] == (0, "4242")


def test_hdpo_distils_only_correct_appended_rows(tok):
    batch = group_batch(tok, [False] * 4 + [True, False, False, False])
    extra = group_batch(tok, [True, False, True, False], prompts=("1+2=",), answers=("4242",))
    merged = concat(batch, extra, tok.pad_token_id, b_weight=0.0)
    assert merged.num_original == 8 and merged.row_weight.tolist() == [1.0] * 8 + [0.0] * 4
    assert HDPO().feedback(merged) == {8: (2, "4242"), 10: (2, "4242")}  # the appended group, prompt 2
    assert merged.provenance.conversation(2) == [{"role": "user", "content": "1+2="}]


def test_concat_repacks_rows(tok):
    a = group_batch(tok, [True, False, False, True, False, False, True, True])
    b = group_batch(tok, [False, False, True, True], prompts=("10+20+30=",), answers=("60",))
    merged = concat(a, b, tok.pad_token_id, b_weight=0.5)
    assert merged.num_rollouts == 12 and merged.provenance.prompts == ["1+2=", "4+4=", "10+20+30="]
    for row in (0, 5, 11):
        src, i = (a, row) if row < 8 else (b, row - 8)
        n = len(src.provenance.response_ids[i])
        assert (
            merged.input_ids[row, merged.response_start : merged.response_start + n].tolist()
            == src.provenance.response_ids[i]
        )
        p = src.provenance.prompt_ids[i // 4]
        assert merged.input_ids[row, merged.response_start - len(p) : merged.response_start].tolist() == p
    assert merged.row_weight.tolist() == [1.0] * 8 + [0.5] * 4
    with pytest.raises(ValueError, match="group sizes"):
        concat(a, group_batch(tok, [True, False], prompts=("1=",), g=2), tok.pad_token_id)


# -- CIPO -----------------------------------------------------------------------------------
def test_choose_failures_one_per_prompt_hardest_first():
    correct = torch.tensor([True, False, True, True, False, False, True, False, True, True, True, True])
    rewards = torch.tensor([1, 0.2, 1, 1, 0.5, 0.1, 1, 0.1, 1, 1, 1, 1])
    # group 1 (1 win) before group 0 (3 wins); group 2 has no failure; in group 1 row 5 and 7 tie
    assert choose_failures(correct, rewards, 4, 5) == [5, 1]
    assert choose_failures(correct, rewards, 4, 1) == [5]
    assert choose_failures(correct, rewards, 4, 0) == []


def test_cipo_prompts_come_from_failed_rollouts_without_the_answer(tok):
    batch = group_batch(tok, [False, True, False, True, False, False, False, False])
    batch = batch.with_provenance(solutions=[" 4242 = 4242", " 4242"])
    obj = CIPO(max_share=0.5)  # up to as many correction groups as prompts
    rows, conversations = obj.correction_prompts(batch, tok)
    assert rows == [4, 0]  # the all-failed prompt first
    texts = [batch.provenance.format.render(c, tok) for c in conversations]
    for row, text in zip(rows, texts):
        assert not bool(batch.correct[row])
        assert batch.provenance.responses[row].strip() in text and batch.provenance.prompts[row // 4] in text
        assert "4242" not in text
    # the share cap: 4 prompts, max_share 0.25 -> at most one correction group (8 of 40 rows... <= 25%)
    wide = group_batch(tok, [False] * 16, prompts=("1=", "2=", "3=", "4="), answers=("5",) * 4)
    assert len(CIPO(max_share=0.25).correction_prompts(wide, tok)[0]) == 1
    assert len(CIPO(max_share=0.5).correction_prompts(wide, tok)[0]) == 4


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: CIPO(max_share=1.0), "cipo.max_share"),
        (lambda: CIPO(template="{prompt} only"), "cipo.template"),
        (lambda: OPSD(b=2.0), "opsd.b"),
        (lambda: SDPO(top_k=0), "sdpo.top_k"),
        (lambda: SDPO(template="no fields"), "sdpo.template"),
        (lambda: OPSD(weight=-1.0), "opsd.weight"),
    ],
)
def test_bad_settings_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- through the module ---------------------------------------------------------------------
def _one_step(tmp_path, tiny_dir, objective, micro_batch_size, group_size=4):
    prompts = 8 if group_size == 2 else 2
    return one_sgd_step(
        tmp_path,
        tiny_dir,
        prompts=prompts,
        group_size=group_size,
        objective=objective,
        micro_batch_size=micro_batch_size,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: OPSD(template="{prompt} {feedback}", pg_weight=0.5),
        lambda: SDPO(template="{prompt} {feedback}", top_k=5),
        lambda: HDPO(),
        lambda: CIPO(max_share=0.5),
    ],
    ids=["opsd", "sdpo", "hdpo", "cipo"],
)
def test_objective_gradient_is_exact_under_micro_batching(tmp_path, tiny_dir, make):
    """One SGD step with whole mini-batches equals one with micro-batches of one rollout."""
    g = 2 if isinstance(make(), HDPO) else 4  # pairs fail together often enough for HDPO
    whole, module = _one_step(tmp_path / "a", tiny_dir, make(), 0, g)
    obj = module.objective
    # the objective's term or samples were part of the step
    assert getattr(obj, "_contexts", None) or getattr(obj, "last_prompts", None)
    split, _ = _one_step(tmp_path / "b", tiny_dir, make(), 1, g)
    start = RLModule(model_path=str(tiny_dir))
    start.configure_model()
    initial = start.policy.state_dict()
    moved = max(float((whole[k] - initial[k]).abs().max()) for k in whole)
    assert moved > 1e-4  # the step did something
    for k in whole:
        assert torch.allclose(whole[k], split[k], atol=2e-6), k


@pytest.mark.parametrize("method", ["opsd", "sdpo", "cipo", "hdpo"])
def test_method_config_trains_end_to_end(tmp_path, tiny_dir, method):
    """Each configs/method/*.yaml trains two steps, and its objective did its part in them."""
    extra = ["--trainer.val_check_interval", "2", "--data.task", "tests.helpers.TextParity"]
    args = [
        "fit",
        *fit_args(
            tiny_dir, tmp_path, method, f"method/{method}.yaml", prompts=4, group=2, eval_size=4, eval_k=0, extra=extra
        ),
    ]
    cli_main(args)
    rows = list(csv.DictReader((tmp_path / method / "v" / "metrics.csv").open()))
    steps = [{k: float(v) for k, v in r.items() if v} for r in rows if r.get("train/grad_norm")]
    assert len(steps) == 2 and all(s["train/grad_norm"] > 0 and "time/samples" in s for s in steps)
    for s in steps:
        own = {k for k in s if k.startswith(f"train/{method}/")}
        assert own and all(math.isfinite(s[k]) for k in own), sorted(s)
    if method == "opsd":  # replaces the policy gradient: the loss is the divergence, on every row
        assert all(s["train/opsd/active_frac"] == 1.0 and s["train/opsd/divergence"] > 0 for s in steps)
        assert all(math.isclose(s["train/loss"], s["train/opsd/divergence"], rel_tol=1e-5) for s in steps)
    elif method == "cipo":  # failed rollouts became correction attempts
        assert all(s["train/cipo/attempts"] >= 1 for s in steps)
    else:  # sdpo, hdpo: a divergence on the rows that have a teacher
        active = [s for s in steps if s[f"train/{method}/active_frac"] > 0]
        assert active and all(s[f"train/{method}/divergence"] > 0 for s in active)


def test_more_minibatches_than_prompts_is_refused(tmp_path, tiny_dir):
    module = RLModule(model_path=str(tiny_dir), num_minibatches=4)
    data = RolloutDataModule(task=TextParity(train_size=50, val_size=4, test_size=4), prompts_per_step=2, eval_size=4)
    with pytest.raises(ValueError, match="model.num_minibatches"):
        trainer(tmp_path, steps=1).fit(module, datamodule=data)

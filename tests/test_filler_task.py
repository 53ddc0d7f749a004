"""The filler task: free filler the verifier skips, drawn afresh (high-entropy), the arithmetic's problems."""

import math
import random
from collections import Counter

import pytest

from cepo.bases.warmup import BUILTIN_BASES, SFTModule
from cepo.bases.warmup_kinds import WarmupConfig
from cepo.tasks import Arithmetic, FillerArithmetic
from cepo.tasks.arithmetic import DECISIVE, FILLER
from cepo.tasks.filler import FILLER_WORDS, draw_filler, strip_filler, with_filler


@pytest.fixture(scope="module")
def task():
    return FillerArithmetic(train_size=200, val_size=50, test_size=50)


def test_reward_ignores_the_filler(task):
    """The same answer with different filler, or none, scores the same; only the number counts."""
    example = task.split("val")[0]
    rng = random.Random(0)
    variants = {with_filler(example.solution, rng, 3) for _ in range(20)}
    variants |= {strip_filler(example.solution), " just " + example.answer, " " + example.answer}
    assert len(variants) > 15  # the wording really differs
    assert {task.reward(v, example.answer) for v in variants} == {1.0}
    wrong = str(int(example.answer) + 1)
    assert {task.reward(v.rsplit(" ", 1)[0] + " " + wrong, example.answer) for v in variants} == {0.0}


def test_verifier_reads_only_the_number_after_the_last_equals(task):
    assert task.extract_answer(" so 3+4 = ok yes 7") == "7"
    assert task.extract_answer(" 3+4 = 7") == "7"
    assert task.extract_answer(" 3+4 = 7 ok") is None  # filler after the answer: no final answer
    assert task.extract_answer(" 3+4 = seven") is None
    assert task.extract_answer(" 3+4 =") is None


def test_filler_is_not_trivially_predictable():
    """Each slot draws 1-2 of 32 words: the first word's empirical entropy is near log2(32) bits,
    and the same problem's warm-up solutions differ from one draw to the next."""
    rng = random.Random(1)
    slots = [draw_filler(rng, 2) for _ in range(4000)]
    firsts = Counter(s.split()[0] for s in slots)
    entropy = -sum(c / len(slots) * math.log2(c / len(slots)) for c in firsts.values())
    assert set(firsts) == set(FILLER_WORDS) and entropy > 4.9  # uniform over 32: 5 bits
    assert Counter(len(s.split()) for s in slots).keys() == {1, 2}
    assert all(ch.islower() for s in slots for ch in s.replace(" ", ""))  # never a digit, '=' or sign
    task = FillerArithmetic(train_size=50, val_size=5, test_size=5)
    example = task.split("train")[0]
    draws = {task.training_solution(example, random.Random(i)) for i in range(50)}
    assert len(draws) > 40 and {strip_filler(d) for d in draws} == {strip_filler(example.solution)}


def test_same_problems_as_arithmetic_with_filler_before_each_step(task):
    plain = Arithmetic(train_size=200, val_size=50, test_size=50)
    for name in ("train", "val", "test"):
        ours, theirs = task.split(name), plain.split(name)
        assert [(e.prompt, e.answer) for e in ours] == [(e.prompt, e.answer) for e in theirs]
        assert [strip_filler(e.solution) for e in ours] == [e.solution for e in theirs]
        assert all(task.is_correct(e.solution, e.answer) for e in ours)
    steps = plain.split("val")[0].solution.count("=") + 1
    assert all(len(seg.split()) >= 2 for seg in task.split("val")[0].solution.split("=")) and steps >= 2
    assert plain.training_solution(plain.split("val")[0], random.Random(0)) == plain.split("val")[0].solution


def test_filler_words_are_filler_for_the_credit_diagnostics(task):
    response = " ok so 3+4 = yes 7"
    roles = task.token_roles(response)
    assert [roles[i] for i, ch in enumerate(response) if ch.isalpha()] == [FILLER] * 7
    assert roles[response.index("7")] == DECISIVE


def test_bad_max_words_is_named():
    with pytest.raises(ValueError, match="task.max_words"):
        FillerArithmetic(max_words=0)


def test_filler_base_has_its_own_key_and_the_default_keeps_its_own():
    assert BUILTIN_BASES["builtin"].key() == "60ab4eb45adb"
    assert BUILTIN_BASES["builtin-filler"].key() not in (WarmupConfig().key(), "60ab4eb45adb")
    assert BUILTIN_BASES["builtin-filler"].task == "filler"


def test_warmup_redraws_the_filler_of_each_solution(tiny_dir):
    """The supervised targets for one problem differ between draws: the base learns filler's
    distribution, not one wording per problem."""
    task = FillerArithmetic(train_size=50, val_size=5, test_size=5)
    module = SFTModule(str(tiny_dir), task, WarmupConfig(task="filler"))
    example = task.split("train")[0]
    targets = set()
    for seed in range(10):
        rows = module.encode([example], [False], random.Random(seed))
        targets.add(tuple(rows.input_ids[0, rows.start :][rows.mask[0]].tolist()))
    assert len(targets) > 5


def test_filler_base_is_known_to_preflight_without_building_it():
    from cepo import preflight

    assert preflight.model_context("builtin-filler") == preflight.model_context("builtin") == 256
    assert preflight.model_kind("builtin-filler") == (False, "LlamaForCausalLM")

"""Presence and repetition penalties: vLLM's meaning in every rollout engine.

vLLM (``vllm/model_executor/layers/utils.py``, ``apply_penalties``) penalizes the raw logits
before temperature: repetition first (tokens of the prompt or the output so far: a positive
logit is divided by the penalty, a negative one multiplied), then presence (subtracted once
from every token of the output so far; the prompt does not count).
"""

import math

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from cepo.rollout.batch import pack
from cepo.rollout.decode import Penalties, sample, warpers
from cepo.rollout.engine import SamplingConfig
from cepo.rollout.hf_engine import HFEngine, left_pad
from cepo.rollout.vllm_engine import vllm_available
from cepo.scoring.logprobs import response_logits, token_logprobs

PAD, EOS = 0, 1
PROMPTS = ["12+34-5=", "7+8+9=", "99-45+3=", "50-25-5=", "1=", "3+3="]

# -- (1) hand-computed processor cases ------------------------------------------------------
LOGITS = [2.0, -1.0, 0.5, -3.0, 1.0]  # tokens 0 (PAD) .. 4
# one left-padded row: the prompt [3, 4] after one pad, then the response so far [2, 2, 1]
SEQUENCE = [PAD, 3, 4, 2, 2, 1]
PROMPT_MASK = torch.tensor([[0, 1, 1]])


def penalized(presence: float, repetition: float, sequence=SEQUENCE) -> list[float]:
    """The ``generate`` processor on one step of the hand-worked row."""
    proc = Penalties(SamplingConfig(presence_penalty=presence, repetition_penalty=repetition), PROMPT_MASK)
    return proc(torch.tensor([sequence]), torch.tensor([LOGITS]))[0].tolist()


@pytest.mark.parametrize(
    "presence,repetition,expected",
    [
        # output tokens 1 and 2 lose 0.5 once each (2 appears twice); prompt tokens 3, 4 keep theirs
        (0.5, 1.0, [2.0, -1.5, 0.0, -3.0, 1.0]),
        # prompt and output tokens 1-4: positive / 2, negative * 2; the pad is no prompt token
        (0.0, 2.0, [2.0, -2.0, 0.25, -6.0, 0.5]),
        # repetition first, then presence: 1: -1*2 - 0.5; 2: 0.5/2 - 0.5
        (0.5, 2.0, [2.0, -2.5, -0.25, -6.0, 0.5]),
        # negative presence and a penalty below 1 reward repeats: 1: -1*0.5 + 0.5; 2: 0.5/0.5 + 0.5
        (-0.5, 0.5, [2.0, 0.0, 1.5, -1.5, 2.0]),
        # neutral settings change nothing
        (0.0, 1.0, LOGITS),
    ],
)
def test_penalties_by_hand(presence, repetition, expected):
    assert penalized(presence, repetition) == pytest.approx(expected, abs=1e-6)


def test_later_steps_count_new_output_tokens():
    # generate calls the processor every step with the longer sequence: token 3, now also
    # generated, loses the presence penalty too
    assert penalized(0.5, 1.0, SEQUENCE + [3]) == pytest.approx([2.0, -1.5, 0.0, -3.5, 1.0], abs=1e-6)


def test_repetition_equals_transformers_over_the_whole_sequence_but_the_padding():
    reference = RepetitionPenaltyLogitsProcessor(2.0)
    unpadded = reference(torch.tensor([SEQUENCE[1:]]), torch.tensor([LOGITS]))[0].tolist()
    assert penalized(0.0, 2.0) == pytest.approx(unpadded, abs=1e-6)
    # transformers' own processor would also penalize the pad of a padded row (vLLM sees no pad)
    padded = reference(torch.tensor([SEQUENCE]), torch.tensor([LOGITS]))[0].tolist()
    assert padded[PAD] == 1.0 and penalized(0.0, 2.0)[PAD] == 2.0


class FixedLM(torch.nn.Module):
    """Fake LM with the same next-token logits everywhere: tokens 2-5 at 3.0, 2.9, 2.8, 2.7, EOS at 2.5.

    Greedy decoding walks down that list as penalties push the tokens it has seen below EOS.
    Records the rows of every forward pass, so the test sees finished rows leave the batch.
    """

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache):
        b, t = input_ids.shape
        self.rows.append(b)
        logits = torch.full((b, t, 7), -50.0)
        logits[..., 2:6] = torch.tensor([3.0, 2.9, 2.8, 2.7])
        logits[..., EOS] = 2.5
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize(
    "presence,repetition,expected,rows",
    [
        # the prompt does not count for presence: every row walks 2, 3, 4, 5, then EOS
        (1.0, 1.0, [[2, 3, 4, 5, EOS]] * 3, [3] * 5),
        # it does for repetition (halved logits fall below EOS): rows end after 2, 4 and 5 tokens
        (0.0, 2.0, [[5, EOS], [2, 3, 4, EOS], [2, 3, 4, 5, EOS]], [3, 3, 2, 2, 1]),
    ],
)
def test_compact_sampler_penalizes_the_right_rows_as_rows_leave(presence, repetition, expected, rows):
    lm = FixedLM()
    ids, mask = left_pad([[2, 3, 4], [5], [6]], PAD)
    sampling = SamplingConfig(temperature=0.0, presence_penalty=presence, repetition_penalty=repetition)
    responses, _ = sample(lm, ids, mask, sampling, EOS)
    assert responses == expected
    assert lm.rows == rows  # prefill, then the rows still decoding


# -- (2) the tiny model: both HF paths ------------------------------------------------------
def engines(model, tok):
    fast, slow = HFEngine(compact=True), HFEngine(compact=False)
    for engine in (fast, slow):
        engine.setup(model, tok, "")
    return fast, slow


def encode(tok, texts=PROMPTS):
    return [tok(p, add_special_tokens=False).input_ids for p in texts]


# each changes this model's greedy output (negative presence only together with repetition:
# alone it reinforces the '=' the model repeats anyway)
CASES = [(2.0, 1.0), (0.0, 2.0), (1.0, 1.3), (0.5, 0.9), (-2.0, 2.0)]


@pytest.mark.parametrize("presence,repetition", CASES)
def test_greedy_compact_and_generate_agree_with_penalties(tiny_model, presence, repetition):
    model, tok = tiny_model
    prompts = encode(tok)
    fast, slow = engines(model, tok)
    plain = SamplingConfig(temperature=0.0, max_new_tokens=40)
    sampling = SamplingConfig(
        temperature=0.0, max_new_tokens=40, presence_penalty=presence, repetition_penalty=repetition
    )
    got = fast.generate(prompts, 1, sampling).response_ids
    assert got == slow.generate(prompts, 1, sampling).response_ids
    assert got != fast.generate(prompts, 1, plain).response_ids  # the random tiny model repeats '=' greedily
    if presence == 2.0:
        assert all(len(set(r)) == len(r) for r in got)  # on this model, no token repeats at all
        assert any(r[-1] == tok.eos_token_id for r in got)  # and rows leave the compact batch early


def reference_logprobs(model, prompts, responses, sampling):
    """Log-probs of the sampled tokens, penalties replayed token by token by their definition."""
    ids, attn, start, _ = pack(prompts, responses, PAD)
    with torch.no_grad():
        raw = response_logits(model, ids, attn, start)  # [N, T, V], no temperature
    out = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        row = []
        for t, token in enumerate(response):
            x = raw[i, t].clone()
            r = sampling.repetition_penalty
            for seen in set(prompt) | set(response[:t]):
                x[seen] = x[seen] / r if x[seen] > 0 else x[seen] * r
            for seen in set(response[:t]):
                x[seen] -= sampling.presence_penalty
            x = warpers(sampling)(None, x[None])[0]
            row.append(float(torch.log_softmax(x, -1)[token]))
        out.append(row)
    return out


@pytest.mark.parametrize("compact", [True, False])
def test_sampled_logprobs_are_those_of_the_penalized_distribution(tiny_model, compact):
    model, tok = tiny_model
    prompts = encode(tok, PROMPTS[:3])
    n = 3
    sampling = SamplingConfig(
        temperature=0.8, top_k=30, max_new_tokens=12, presence_penalty=1.5, repetition_penalty=1.3, seed=1
    )
    engine = engines(model, tok)[0 if compact else 1]
    gen = engine.generate(prompts, n, sampling)
    rows = [p for p in prompts for _ in range(n)]
    expected = reference_logprobs(model, rows, gen.response_ids, sampling)
    for got, want in zip(gen.logprobs, expected):
        assert got == pytest.approx(want, abs=1e-4)
    # the trainer scores without penalties (temperature only): its log-probs differ from the engine's
    ids, attn, start, mask = pack(rows, gen.response_ids, PAD)
    with torch.no_grad():
        trainer = token_logprobs(response_logits(model, ids, attn, start, sampling.temperature), ids[:, start:])
    engine_lp = torch.zeros_like(trainer)
    for i, row in enumerate(gen.logprobs):
        engine_lp[i, : len(row)] = torch.tensor(row)
    assert float((engine_lp - trainer)[mask.bool()].abs().max()) > 0.1


# -- (3) vLLM agrees with the HF engine -----------------------------------------------------
VLLM_OK, VLLM_WHY = vllm_available()


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_OK, reason=f"vLLM not importable: {VLLM_WHY}")
def test_vllm_matches_hf_with_penalties(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cepo.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    engine = VLLMEngine(max_model_len=128)
    engine.setup(policy, tok, str(tiny_dir))
    engine.sync_weights(policy, 0)
    prompts = encode(tok)
    hf = HFEngine()
    hf.setup(policy, tok, "")
    for presence, repetition in CASES:
        sampling = SamplingConfig(
            temperature=0.0, max_new_tokens=32, presence_penalty=presence, repetition_penalty=repetition
        )
        assert engine.generate(prompts, 1, sampling).response_ids == hf.generate(prompts, 1, sampling).response_ids
    # vLLM's sampled log-probs (processed_logprobs) are those of the penalized distribution too
    sampling = SamplingConfig(temperature=0.8, max_new_tokens=12, presence_penalty=1.5, repetition_penalty=1.3)
    gen = engine.generate(prompts[:3], 2, sampling)
    rows = [p for p in prompts[:3] for _ in range(2)]
    for got, want in zip(gen.logprobs, reference_logprobs(policy, rows, gen.response_ids, sampling)):
        assert got == pytest.approx(want, abs=1e-4)


# -- (4) bad values are refused, naming the setting -----------------------------------------
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"presence_penalty": 2.5}, "sampling.presence_penalty"),
        ({"presence_penalty": -2.01}, "sampling.presence_penalty"),
        ({"presence_penalty": math.nan}, "sampling.presence_penalty"),
        ({"repetition_penalty": 0.0}, "sampling.repetition_penalty"),
        ({"repetition_penalty": -1.2}, "sampling.repetition_penalty"),
        ({"repetition_penalty": math.inf}, "sampling.repetition_penalty"),
        ({"repetition_penalty": math.nan}, "sampling.repetition_penalty"),
    ],
)
def test_bad_penalties_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_edge_values_are_accepted():
    for kwargs in ({"presence_penalty": 2.0}, {"presence_penalty": -2.0}, {"repetition_penalty": 0.01}):
        SamplingConfig(**kwargs)
    assert not SamplingConfig().penalized and SamplingConfig(repetition_penalty=1.1).penalized

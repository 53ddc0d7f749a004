"""The HF engine's compacting sampling loop against ``model.generate`` and the trainer."""

import pytest
import torch

from cepo.rollout.batch import pack
from cepo.rollout.decode import sample, warpers
from cepo.rollout.engine import SamplingConfig
from cepo.rollout.hf_engine import HFEngine, left_pad
from cepo.scoring.logprobs import response_logits, token_logprobs

EOS = 1


class CountdownLM(torch.nn.Module):
    """Fake LM: prompt token ``k`` (2-4) is answered ``k`` repeated ``k - 1`` times, then EOS.

    Records the rows of every forward pass, so the test sees finished rows leave the batch.
    """

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache):
        self.rows.append(input_ids.shape[0])
        x = input_ids[:, -1]
        step = position_ids[:, -1]  # one-token prompts: the response index of the next token
        nxt = torch.where(step + 1 >= x, torch.full_like(x, EOS), x)
        logits = torch.full((x.shape[0], 1, 6), -50.0)
        logits[torch.arange(x.shape[0]), 0, nxt] = 50.0
        return type("Out", (), {"logits": logits})()


def test_finished_rows_leave_the_batch():
    lm = CountdownLM()
    ids = torch.tensor([[4], [2], [3]])
    responses, logprobs = sample(lm, ids, torch.ones_like(ids), SamplingConfig(temperature=1.0), EOS)
    assert responses == [[4, 4, 4, EOS], [2, EOS], [3, 3, EOS]]
    assert lm.rows == [3, 3, 2, 1]  # prefill, then the rows still decoding
    assert all(abs(v) < 1e-6 for row in logprobs for v in row)
    lm.rows.clear()
    cut, _ = sample(lm, ids, torch.ones_like(ids), SamplingConfig(temperature=0.0, max_new_tokens=2), EOS)
    assert cut == [[4, 4], [2, EOS], [3, 3]] and lm.rows == [3, 3]


def test_greedy_matches_generate(tiny_model):
    model, tok = tiny_model
    prompts = [tok(p, add_special_tokens=False).input_ids for p in ("1+2=", "13-4+2=", "7=", "20+20-3=")]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    fast, slow = HFEngine(compact=True), HFEngine(compact=False)
    for engine in (fast, slow):
        engine.setup(model, tok, "")
    assert fast.generate(prompts, 1, greedy).response_ids == slow.generate(prompts, 1, greedy).response_ids


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (5, 1.0, 0.7), (0, 0.8, 1.3)])
def test_sampled_logprobs_are_those_of_the_processed_distribution(tiny_model, top_k, top_p, temperature):
    model, tok = tiny_model
    prompts = [tok(p, add_special_tokens=False).input_ids for p in ("1+2=", "13-4+2=")]
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=10)
    ids, mask = left_pad([p for p in prompts for _ in range(3)], tok.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    responses, lps = sample(model, ids, mask, sampling, tok.eos_token_id, gen)
    packed, attn, start, rmask = pack([p for p in prompts for _ in range(3)], responses, tok.pad_token_id)
    with torch.no_grad():
        logits = response_logits(model, packed, attn, start)  # raw: the warpers scale and cut
    n, t, v = logits.shape
    processed = warpers(sampling)(None, logits.reshape(n * t, v)).reshape(n, t, v)
    expected = token_logprobs(processed, packed[:, start:])
    for i, row in enumerate(lps):
        assert len(row) == len(responses[i]) == int(rmask[i].sum())
        assert torch.allclose(torch.tensor(row), expected[i, : len(row)], atol=1e-4)
    if top_k or top_p < 1:  # the cut was real: some sampled tokens gained mass from it
        full = token_logprobs(logits / temperature, packed[:, start:])
        assert bool((expected - full)[rmask].gt(1e-4).any())
    # the same generator seed draws the same responses
    again, _ = sample(model, ids, mask, sampling, tok.eos_token_id, torch.Generator().manual_seed(0))
    assert again == responses

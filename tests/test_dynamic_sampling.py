"""DAPO dynamic sampling: which groups are kept, how many rounds, the prompt stream, a fit."""

import lightning as L
import pytest
import torch

from cepo.module import RLModule
from cepo.rollout.batch import gather_groups
from cepo.rollout.dynamic import DynamicSampling, dynamic_batch, round_size
from cepo.rollout.stream import PromptStream
from tests.helpers import make_batch, small_data, trainer

G = 2


class Rounds:
    """A fake engine + verifier: prompt ``i`` gets the rewards ``rewards[i]`` (``G`` of them)."""

    def __init__(self, tok, rewards):
        self.tok, self.rewards, self.calls = tok, rewards, []

    def draw(self, n):
        start = sum(len(c) for c in self.calls)
        return list(range(start, start + n))

    def rollout(self, prompts):
        self.calls.append(list(prompts))
        rewards = [r for p in prompts for r in self.rewards[p]]
        responses = [f"{p}{'x' * (i + p % 3)}" for p in prompts for i in range(G)]
        batch = make_batch(
            self.tok, [f"{p}+0=" for p in prompts], [str(p) for p in prompts], responses, rewards, responses, G
        )
        batch.engine_logprobs = -torch.rand(batch.response_mask.shape) * batch.response_mask
        return batch


def test_groups_with_differing_rewards_are_kept_and_refilled(tiny_model):
    """3 prompts a step. Round 1: prompts 0 (tie), 1 (kept), 2 (tie): 1 kept of 3 drawn, 2 missing,
    so round 2 draws min(3, ceil(2 * 3 / 1)) = 3 prompts: 3 (kept), 4 (tie), 5 (kept). Done."""
    _, tok = tiny_model
    rewards = [[1, 1], [0, 1], [0, 0], [1, 0], [1, 1], [0, 1], [1, 0]]
    fake = Rounds(tok, rewards)
    batch = dynamic_batch(fake.draw, fake.rollout, prompts_per_step=3, max_rounds=4, pad_id=tok.pad_token_id)
    assert fake.calls == [[0, 1, 2], [3, 4, 5]]
    assert batch.provenance.prompts == ["1+0=", "3+0=", "5+0="]
    assert batch.rewards.tolist() == [0, 1, 1, 0, 0, 1]
    assert batch.info == {"gen_rounds": 2.0, "groups_kept": 3.0, "groups_discarded": 3.0, "prompts_drawn": 6.0}


def test_when_rounds_run_out_the_ties_fill_the_batch(tiny_model):
    """Only prompt 4 has differing rewards; two rounds of 3 draw prompts 0-5, then the batch is
    prompt 4 followed by the first ties in the order drawn (0 and 1)."""
    _, tok = tiny_model
    rewards = [[1, 1], [0, 0], [0, 0], [1, 1], [1, 0], [0, 0]]
    fake = Rounds(tok, rewards)
    batch = dynamic_batch(fake.draw, fake.rollout, prompts_per_step=3, max_rounds=2, pad_id=tok.pad_token_id)
    assert fake.calls == [[0, 1, 2], [3, 4, 5]]  # no group kept after round 1: a full round
    assert batch.provenance.prompts == ["4+0=", "0+0=", "1+0="]
    assert batch.rewards.tolist() == [1, 0, 1, 1, 0, 0]
    assert batch.info == {"gen_rounds": 2.0, "groups_kept": 1.0, "groups_discarded": 3.0, "prompts_drawn": 6.0}


def test_surplus_groups_of_the_last_round_are_dropped(tiny_model):
    _, tok = tiny_model
    rewards = [[1, 1], [0, 1], [1, 0], [0, 1], [1, 0]]
    fake = Rounds(tok, rewards)
    batch = dynamic_batch(fake.draw, fake.rollout, prompts_per_step=3, max_rounds=3, pad_id=tok.pad_token_id)
    # round 2: min(3, ceil(1 * 3 / 2)) = 2 prompts, both kept, one too many
    assert fake.calls == [[0, 1, 2], [3, 4]]
    assert batch.provenance.prompts == ["1+0=", "2+0=", "3+0="]
    assert batch.info["groups_kept"] == 3.0 and batch.info["groups_discarded"] == 1.0


def test_round_size():
    assert round_size(32, missing=8, drawn=32, kept=24) == 11  # ceil(8 * 32 / 24)
    assert round_size(32, missing=30, drawn=32, kept=2) == 32  # capped
    assert round_size(32, missing=32, drawn=32, kept=0) == 32


def test_gathered_groups_keep_their_rows(tiny_model):
    _, tok = tiny_model
    fake = Rounds(tok, [[0, 1]] * 4)
    a, b = fake.rollout([0, 1]), fake.rollout([2, 3])
    out = gather_groups([(b, 1), (a, 0)], tok.pad_token_id)
    assert (
        out.provenance.prompts == ["3+0=", "0+0="]
        and out.provenance.responses == b.provenance.responses[2:] + a.provenance.responses[:2]
    )
    assert out.timings == {} and out.provenance.weight_version == 0
    for i, (src, row) in enumerate([(b, 2), (b, 3), (a, 0), (a, 1)]):
        n = len(src.provenance.response_ids[row])
        assert out.provenance.response_ids[i] == src.provenance.response_ids[row]
        assert out.response_mask[i].sum() == n
        assert torch.equal(out.engine_logprobs[i, :n], src.engine_logprobs[row, :n])
        start = out.response_start
        assert torch.equal(out.input_ids[i, start : start + n], torch.tensor(src.provenance.response_ids[row]))
    assert out.engine_logprobs.shape == out.response_mask.shape


@pytest.mark.parametrize("rounds", [-1, 1])
def test_bad_max_rounds_names_the_setting(rounds):
    with pytest.raises(ValueError, match="data.dynamic_sampling.max_rounds"):
        DynamicSampling(max_rounds=rounds)


def test_prompt_stream_reads_each_epoch_once_and_resumes():
    stream = PromptStream(5, seed=3)
    first = stream.take(3) + stream.take(4)  # crosses into the second epoch
    assert sorted(first[:5]) == list(range(5)) and len(set(first[5:])) == 2
    rest = stream.take(3)
    assert sorted(first[5:] + rest) == list(range(5))
    again = PromptStream(5, seed=3)
    again.take(7)
    copy = PromptStream(5, seed=3)
    copy.load_state_dict(again.state_dict())
    assert copy.take(3) == rest
    assert PromptStream(5, seed=3).order(0) != PromptStream(5, seed=3).order(1)


def test_fit_trains_on_groups_with_differing_rewards(tmp_path, tiny_dir):
    L.seed_everything(0)
    module = RLModule(model_path=str(tiny_dir))
    data = small_data(dynamic_sampling=DynamicSampling(max_rounds=4))
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
            seen.append(batch)

    tr = trainer(tmp_path, steps=4)
    tr.callbacks.append(Spy())
    tr.fit(module, datamodule=data)
    assert len(seen) == 4
    for batch in seen:
        ties = batch.rewards.view(-1, batch.group_size).std(dim=1) == 0
        assert ties.sum() == 2 - batch.info["groups_kept"]  # ties only when the rounds ran out
        assert batch.info["prompts_drawn"] >= 2 and 1 <= batch.info["gen_rounds"] <= 4
    assert data.stream.taken == sum(b.info["prompts_drawn"] for b in seen)


def test_streamed_prompts_are_refused_with_several_training_processes():
    """The prompt stream is one per run, not split across ranks: with DDP every rank would draw
    the same prompts, so it is refused in one line."""

    class TwoRanks:
        distributed_sampler_kwargs = {"num_replicas": 2, "rank": 0}

    data = small_data(dynamic_sampling=DynamicSampling(max_rounds=4))
    data.setup("fit")
    data.trainer = TwoRanks()
    with pytest.raises(ValueError, match="one training process only"):
        data.train_dataloader()
    data.trainer = None
    assert len(data.train_dataloader()) > 0

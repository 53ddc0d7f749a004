"""One-step-off rollouts: batch k+1 is generated while batch k trains, one rollout step stale at
most, with the weights recorded, and corrected by the truncated importance ratio."""

import lightning as L
import pytest
import torch

import cepo.step
from cepo.module import RLModule
from cepo.objectives import CIPO
from cepo.rollout.hf_engine import HFEngine
from cepo.step_stats import allowed_lag, check_lag
from tests.helpers import small_data, trainer


class RecordingEngine(HFEngine):
    """HFEngine that records, per generate call, its weight version and a checksum of its weights."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def generate(self, prompt_ids, n, sampling, images=None):
        checksum = float(sum(p.double().sum() for p in self.policy.parameters()))
        self.calls.append((self.weight_version, checksum))
        return super().generate(prompt_ids, n, sampling)


def checksum(model):
    return float(sum(p.double().sum() for p in model.parameters()))


@pytest.mark.parametrize("num_minibatches", [1, 2])
def test_staleness_is_one_step_and_the_weights_are_recorded(tmp_path, tiny_dir, num_minibatches, monkeypatch):
    L.seed_everything(0)
    surrogate, weights = cepo.step.clipped_surrogate, []

    def spy_surrogate(logp, old, adv, mask, eps_low, eps_high, c_dual, tis=None):
        weights.append(None if tis is None else tis[mask])
        return surrogate(logp, old, adv, mask, eps_low, eps_high, c_dual, tis)

    monkeypatch.setattr(cepo.step, "clipped_surrogate", spy_surrogate)
    module = RLModule(
        model_path=str(tiny_dir),
        num_minibatches=num_minibatches,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5, weight_decay=0.1),  # the weights move every update
        tis_cap=2.0,
        micro_batch_size=64,  # one pass per update: one recorded weight tensor per update
        skip_zero_loss_rows=False,
    )
    data = small_data(RecordingEngine(), one_step_off=True)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
            seen.append(
                (batch.provenance.weight_version, pl_module.weight_version, checksum(pl_module.policy), len(weights))
            )

    tr = trainer(tmp_path, steps=4 * num_minibatches)
    tr.callbacks.append(Spy())
    tr.fit(module, datamodule=data)
    calls = data.background.sampler.engine.calls
    assert len(seen) == 4 and len(calls) == 5  # the fifth batch was pending when the run stopped
    for i, (batch_v, module_v, _, _) in enumerate(seen):
        assert batch_v == calls[i][0]  # the batch carries the version it was generated with
        assert module_v == i * num_minibatches
        assert module_v - batch_v == (0 if i == 0 else num_minibatches)  # one rollout step at most
    for i in range(1, 5):  # batch i came from a copy of the weights step i-1 started from
        assert calls[i][1] == pytest.approx(seen[i - 1][2], rel=0, abs=1e-6)
    assert calls[0][1] == pytest.approx(seen[0][2], rel=0, abs=1e-6)
    assert float(tr.callback_metrics["train/staleness"]) == num_minibatches
    # the importance weights of the trainer's recomputed log-probs to the engine's: 1 on-policy
    # (step 0's first update), not 1 on stale batches, never above the cap
    first_stale = seen[1][3]
    assert all(w is not None and float(w.max()) <= 2.0 for w in weights)
    assert torch.allclose(weights[0], torch.ones_like(weights[0]), atol=1e-4)
    assert all(float((w - 1).abs().max()) > 1e-3 for w in weights[first_stale:])


def test_a_stopped_run_rewinds_the_pending_draws(tmp_path, tiny_dir):
    """The batch pending when training stops is dropped, and the prompt stream and the engine's
    draw counter go back to before it: a checkpoint then resumes by drawing it again."""
    L.seed_everything(0)
    module = RLModule(model_path=str(tiny_dir), tis_cap=2.0)
    data = small_data(one_step_off=True)
    trainer(tmp_path, steps=3).fit(module, datamodule=data)
    state = data.state_dict()
    assert state["stream"] == {"taken": 3 * data.prompts_per_step}
    assert state["rollout_engine"] == {"calls": 3}
    assert not data.background.pending


def test_one_step_off_needs_the_importance_correction(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="model.tis_cap"):
        trainer(tmp_path, steps=1).fit(RLModule(model_path=str(tiny_dir)), datamodule=small_data(one_step_off=True))


def test_one_step_off_refuses_objectives_that_append_rows(tmp_path, tiny_dir):
    module = RLModule(model_path=str(tiny_dir), tis_cap=2.0, objective=CIPO())
    with pytest.raises(ValueError, match="data.one_step_off"):
        trainer(tmp_path, steps=1).fit(module, datamodule=small_data(one_step_off=True))


def test_lag_bounds():
    assert allowed_lag(0, 2, None, True) == 0  # on-policy: nothing to check
    assert allowed_lag(1, 2, 2.0, False) == 2  # one rollout step of 2 updates
    assert check_lag(5, 7, allowed=2) == 2
    for batch_version, version, allowed in [(5, 8, 2), (5, 6, 0), (6, 5, 2)]:
        with pytest.raises(RuntimeError, match="off-policy"):
            check_lag(batch_version, version, allowed)


def test_one_step_off_with_dynamic_sampling(tmp_path, tiny_dir):
    """The background thread runs dynamic sampling's rounds too; the draws stay in order."""
    from cepo.rollout.dynamic import DynamicSampling

    L.seed_everything(0)
    module = RLModule(model_path=str(tiny_dir), tis_cap=2.0)
    data = small_data(one_step_off=True, dynamic_sampling=DynamicSampling(max_rounds=3))
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
            seen.append((pl_module.weight_version - batch.provenance.weight_version, batch.info["prompts_drawn"]))

    tr = trainer(tmp_path, steps=3)
    tr.callbacks.append(Spy())
    tr.fit(module, datamodule=data)
    assert [lag for lag, _ in seen] == [0, 1, 1]
    assert data.stream.taken == sum(drawn for _, drawn in seen)  # the pending batch's draws rewound


def test_a_checkpoint_while_a_batch_is_pending_resumes_by_drawing_it_again(tmp_path, tiny_dir):
    """The DataModule state saved after step 1 (batch 2 generating in the background) is the
    state from before batch 2's draws: restored, it draws batch 2's prompts with the same engine
    draw counter."""
    L.seed_everything(0)
    module = RLModule(model_path=str(tiny_dir), tis_cap=2.0)
    data = small_data(one_step_off=True)
    seen, saved = [], []

    class Spy(L.Callback):
        def on_train_batch_start(self, tr, pl_module, batch, batch_idx):
            seen.append(list(batch.provenance.prompts))

        def on_train_batch_end(self, tr, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                assert data.background.pending
                saved.append(data.state_dict())

    tr = trainer(tmp_path, steps=3)
    tr.callbacks.append(Spy())
    tr.fit(module, datamodule=data)
    (state,) = saved
    assert state["stream"] == {"taken": 2 * data.prompts_per_step} and state["rollout_engine"] == {"calls": 2}
    again = small_data(one_step_off=True)
    again.load_state_dict(state)
    again.train_dataloader()
    rows = again.task.split("train")
    assert [rows[i].prompt for i in again.stream.take(again.prompts_per_step)] == seen[2]
    assert again.background.sampler.engine.state_dict() == {"calls": 2}

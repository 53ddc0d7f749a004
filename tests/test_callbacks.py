"""The beta schedule: its values by hand, the callback driving the credit rule's beta each rollout
step, restoring it at the end, and resuming from the checkpointed start value."""

import math

import lightning as L
import pytest

from cepo.callbacks import BetaSchedule
from cepo.callbacks.beta_schedule import beta_at
from cepo.credit import MixedCredit, Uniform
from cepo.credit.base import uniform_output
from cepo.module import RLModule
from tests.helpers import small_data, trainer


@pytest.mark.parametrize(
    "kind, step, expected",
    [
        ("linear", 0, 0.5),
        ("linear", 1, 0.375),
        ("linear", 2, 0.25),
        ("linear", 4, 0.0),
        ("linear", 9, 0.0),  # stays 0 after decay_steps
        ("cosine", 0, 0.5),
        ("cosine", 1, 0.25 * (1 + math.cos(math.pi / 4))),
        ("cosine", 2, 0.25),
        ("cosine", 3, 0.25 * (1 + math.cos(3 * math.pi / 4))),
        ("cosine", 4, 0.0),
        ("cosine", 9, 0.0),
        ("constant", 0, 0.5),
        ("constant", 100, 0.5),
    ],
)
def test_beta_at_by_hand(kind, step, expected):
    assert beta_at(step, 0.5, kind, decay_steps=4) == pytest.approx(expected, abs=1e-12)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="linear, cosine or constant"):
        beta_at(0, 0.5, "exponential", 4)
    with pytest.raises(ValueError, match="linear, cosine or constant"):
        BetaSchedule(kind="exponential")
    with pytest.raises(ValueError, match="decay_steps must be >= 1"):
        BetaSchedule(decay_steps=0)


class BetaRecorder(MixedCredit):
    """GRPO credit with a mixing coefficient; records the beta each step's credit ran with."""

    def __init__(self, beta: float):
        self.beta = beta
        self.seen = []

    def assign(self, inputs):
        self.seen.append(self.beta)
        return uniform_output(inputs)


class NotMixed(Uniform):
    """A rule with an attribute that happens to be called ``beta`` but no mixing coefficient."""

    def __init__(self):
        self.beta = 0.7
        self.seen = []

    def assign(self, inputs):
        self.seen.append(self.beta)
        return super().assign(inputs)


def fit(tmp_path, tiny_dir, beta, schedule, steps, ckpt_path=None):
    L.seed_everything(0)
    credit = BetaRecorder(beta)
    module = RLModule(model_path=str(tiny_dir), credit=credit)
    tr = trainer(tmp_path, steps=steps, callbacks=[schedule])
    tr.fit(module, datamodule=small_data(), ckpt_path=ckpt_path)
    return tr, module, credit


@pytest.mark.parametrize(
    "kind, expected",
    [("linear", [0.5, 0.25, 0.0, 0.0]), ("cosine", [0.5, 0.25, 0.0, 0.0]), ("constant", [0.5] * 4)],
)
def test_callback_sets_beta_every_step_and_restores_it(tmp_path, tiny_dir, kind, expected):
    _, module, credit = fit(tmp_path, tiny_dir, 0.5, BetaSchedule(kind, decay_steps=2), steps=4)
    assert credit.seen == pytest.approx(expected, abs=1e-12)
    assert module.credit.beta == 0.5  # left as configured


def test_rules_without_a_mixing_coefficient_are_left_alone(tmp_path, tiny_dir):
    L.seed_everything(0)
    module = RLModule(model_path=str(tiny_dir), credit=NotMixed())
    trainer(tmp_path, steps=3, callbacks=[BetaSchedule("linear", decay_steps=2)]).fit(module, datamodule=small_data())
    assert module.credit.seen == [0.7, 0.7, 0.7]


def test_resume_uses_the_checkpointed_start_beta(tmp_path, tiny_dir):
    tr, _, credit = fit(tmp_path / "a", tiny_dir, 0.5, BetaSchedule("linear", decay_steps=4), steps=2)
    assert credit.seen == [0.5, 0.375]
    ckpt = tmp_path / "two_steps.ckpt"
    tr.save_checkpoint(ckpt)
    # the resumed run's rule starts elsewhere; the schedule continues from the checkpoint's beta0
    schedule = BetaSchedule("linear", decay_steps=4)
    _, module, credit = fit(tmp_path / "b", tiny_dir, 0.2, schedule, steps=4, ckpt_path=str(ckpt))
    assert module.rl_step == 4
    assert schedule.beta0 == 0.5
    assert credit.seen == pytest.approx([0.25, 0.125], abs=1e-12)  # steps 2 and 3 of 0.5 -> 0 over 4

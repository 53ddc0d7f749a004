"""The warm-ups' stop at a target accuracy: checks come often near the target, and a jump past it
is undone from copies of the weights, so the warm-up ends close to the target."""

import torch

from cepo.bases.warmup_kinds import VLWarmupConfig, WarmupConfig
from cepo.bases.warmup_target import TargetStop, check_due

FAR_NEAR = dict(target=0.3, near=0.15, every=100, near_every=10, max_steps=3000)


def test_checks_every_100_steps_far_from_the_target_and_every_10_near_it():
    assert check_due(100, None, **FAR_NEAR) and not check_due(10, None, **FAR_NEAR)
    assert not check_due(110, 0.149, **FAR_NEAR)  # 0.151 below 0.3: still far
    assert check_due(110, 0.15, **FAR_NEAR) and not check_due(105, 0.15, **FAR_NEAR)
    assert check_due(3000, 0.0, **FAR_NEAR) and check_due(3001, 0.0, **FAR_NEAR)  # the last step


class Trained(torch.nn.Module):
    """A stand-in for a model under warm-up: its only state is the step its weights are from."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.tensor(0))


def run(stop: TargetStop, curve) -> tuple[tuple[int, float], int, list[int]]:
    """Run ``stop`` on a warm-up whose weights of step s score ``curve(s)``; return what it chose,
    the step of the weights the model ends with, and the steps it measured, in order."""
    model, measured = Trained(), []

    def accuracy() -> float:
        measured.append(int(model.step))
        return curve(int(model.step))

    for step in range(1, stop.max_steps + 1):
        model.step.fill_(step)  # one optimizer step
        if stop.update(step, accuracy, model):
            break
    return stop.chosen, int(model.step), measured


def steep(step: int) -> float:
    """A warm-up that learns in a jump: 0.2 at step 400, then +0.5 points a step."""
    return min(1.0, 0.2 + 0.005 * (step - 400)) if step >= 400 else 0.05


def test_a_steep_warmup_stops_at_the_target_not_past_it():
    chosen, _, _ = run(TargetStop(0.3, 0.15, 100, 10, 3000, tolerance=0.05), steep)
    assert (chosen[0], round(chosen[1], 3)) == (420, 0.3)  # checks at 100..400, then 410 (0.25), 420 (0.30)
    # checking every 100 steps throughout (the old warm-up) overshoots to 0.7 at step 500
    chosen, _, _ = run(TargetStop(0.3, 0.15, 100, 100, 3000), steep)
    assert (chosen[0], round(chosen[1], 3)) == (500, 0.7)


def jump(step: int) -> float:
    """The VL base built on 2026-12-05: 13% at step 600, 63% at 700; here the jump is at steps 640-660."""
    return 0.13 if step < 640 else 0.25 if step < 660 else 0.63


def test_a_jump_past_the_target_between_two_checks_is_undone():
    chosen, ends_with, measured = run(TargetStop(0.3, 0.15, 100, 10, 3000, tolerance=0.05), jump)
    # 700 lands at 0.63, more than 0.05 above 0.3: the copies of 610, 620, ... are re-checked up to
    # the first at or above 0.3 (660: 0.63); the last below (650: 0.25) is closer to 0.3
    assert measured == [100, 200, 300, 400, 500, 600, 700, 610, 620, 630, 640, 650, 660]
    assert chosen == (650, 0.25) and ends_with == 650
    assert abs(chosen[1] - 0.3) <= 0.05
    # the near-target checks alone (no rewind) stop at the jump's end, as the VL base did
    chosen, ends_with, _ = run(TargetStop(0.3, 0.15, 100, 10, 3000), jump)
    assert chosen == (700, 0.63) and ends_with == 700


def test_the_text_kind_checks_every_check_every_steps_and_never_rewinds():
    # the published text bases stopped at the first check at the target, however far past it
    chosen, ends_with, measured = run(WarmupConfig(max_steps=3000).stop(), jump)
    assert chosen == (700, 0.63) and ends_with == 700 and measured == [100, 200, 300, 400, 500, 600, 700]
    chosen, _, measured = run(WarmupConfig(max_steps=250, check_every=20).stop(), lambda s: 0.0)
    assert chosen is None and measured == [*range(20, 250, 20), 250]
    # the VL kind, on the same curve, checks near the target and rewinds the jump
    chosen, ends_with, _ = run(VLWarmupConfig().stop(), jump)
    assert chosen == (650, 0.25) and ends_with == 650


def test_the_copy_at_or_above_the_target_wins_when_it_is_closer():
    def curve(step):
        return 0.13 if step < 640 else 0.32 if step < 680 else 0.63

    stop = TargetStop(0.3, 0.15, 100, 10, 3000, tolerance=0.05)
    chosen, ends_with, _ = run(stop, curve)
    assert chosen == (640, 0.32) and ends_with == 640
    assert stop.rechecks == [(610, 0.13), (620, 0.13), (630, 0.13), (640, 0.32)]


def test_a_stop_within_the_tolerance_keeps_its_weights():
    chosen, ends_with, measured = run(TargetStop(0.3, 0.15, 100, 10, 3000, tolerance=0.05), lambda s: 0.34 * (s >= 650))
    assert chosen == (700, 0.34) and ends_with == 700 and measured == [100, 200, 300, 400, 500, 600, 700]


def test_without_copies_above_the_target_the_previous_check_competes_with_the_overshoot():
    # the jump happens within the last 10 steps: every copy re-checks below, so the choice is
    # between the copy of 690 (0.13) and the check of 700 itself (0.63)
    stop = TargetStop(0.3, 0.15, 100, 10, 3000, tolerance=0.05)
    chosen, ends_with, _ = run(stop, lambda s: 0.63 if s >= 700 else 0.13)
    assert chosen == (690, 0.13) and ends_with == 690


def test_accuracy_is_measured_only_at_checks():
    calls = []
    stop = TargetStop(0.3, 0.15, 100, 10, 3000)
    model = Trained()
    for step in range(1, 250):
        stop.update(step, lambda: calls.append(step) or 0.0, model)
    assert calls == [100, 200] and stop.checks == [(100, 0.0), (200, 0.0)]


def test_the_stop_settings_key_the_vl_cache():
    assert VLWarmupConfig(near_check_every=100).key() != VLWarmupConfig().key()
    assert VLWarmupConfig(tolerance=1.0).key() != VLWarmupConfig().key()
    # b21005544655 (near-target checks, no rewind) stopped at 63%; the rewind's base has its own key
    assert VLWarmupConfig().key() == "f783dfc92f8d"

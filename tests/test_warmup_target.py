"""The warm-ups' stop at a target accuracy: checks come often near the target, so it stops close to it."""

from cepo.bases.warmup_target import TargetStop, check_due
from cepo.bases.warmup_vl import VLWarmupConfig, vl_key

FAR_NEAR = dict(target=0.3, near=0.15, every=100, near_every=10, max_steps=3000)


def test_checks_every_100_steps_far_from_the_target_and_every_10_near_it():
    assert check_due(100, None, **FAR_NEAR) and not check_due(10, None, **FAR_NEAR)
    assert not check_due(110, 0.149, **FAR_NEAR)  # 0.151 below 0.3: still far
    assert check_due(110, 0.15, **FAR_NEAR) and not check_due(105, 0.15, **FAR_NEAR)
    assert check_due(3000, 0.0, **FAR_NEAR) and check_due(3001, 0.0, **FAR_NEAR)  # the last step


def steep(step: int) -> float:
    """A warm-up that learns in a jump: 0.2 at step 400, then +0.5 points a step."""
    return min(1.0, 0.2 + 0.005 * (step - 400)) if step >= 400 else 0.05


def run(stop: TargetStop) -> tuple[int, float]:
    for step in range(1, stop.max_steps + 1):
        if stop.update(step, lambda: steep(step)):
            break
    return stop.checks[-1]


def test_a_steep_warmup_stops_at_the_target_not_past_it():
    step, accuracy = run(TargetStop(0.3, 0.15, 100, 10, 3000))
    assert (step, round(accuracy, 3)) == (420, 0.3)  # checks at 100..400, then 410 (0.25), 420 (0.30)
    # checking every 100 steps throughout (the old warm-up) overshoots to 0.7 at step 500
    step, accuracy = run(TargetStop(0.3, 0.15, 100, 100, 3000))
    assert (step, round(accuracy, 3)) == (500, 0.7)


def test_accuracy_is_measured_only_at_checks():
    calls = []
    stop = TargetStop(0.3, 0.15, 100, 10, 3000)
    for step in range(1, 250):
        stop.update(step, lambda: calls.append(step) or 0.0)
    assert calls == [100, 200] and stop.checks == [(100, 0.0), (200, 0.0)]


def test_the_near_checks_key_the_vl_cache():
    assert vl_key(VLWarmupConfig(near_check_every=100)) != vl_key(VLWarmupConfig())
    assert vl_key(VLWarmupConfig()) == "b21005544655"  # the base the issue #24 comparison used

"""The trigger policy: every cause, cooldown, cap, and a reason for every decision."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fedretrain.config import ConfigError
from fedretrain.monitor.scoring import score_detections
from fedretrain.monitor.trigger import TriggerConfig, TriggerPolicy


@dataclass(frozen=True)
class FakeAlarm:
    drifted: bool
    reason: str = "test alarm"


def _run(policy: TriggerPolicy, periods: int, **kwargs: object) -> list[int]:
    policy.trained(0, initial=True)
    fired = []
    for t in range(1, periods):
        decision = policy.decide(t, **kwargs)  # type: ignore[arg-type]
        assert decision.reason  # every decision, "no retrain" included, says why
        if decision.retrain:
            policy.trained(t)
            fired.append(t)
    return fired


def test_never_policy_never_fires_even_on_alarms() -> None:
    policy = TriggerPolicy(TriggerConfig(name="never", on_drift=False))
    assert _run(policy, 20, accuracy=0.1, labelled=100, detections=[FakeAlarm(True)]) == []


def test_drift_alarm_triggers_and_is_named_in_the_reason() -> None:
    policy = TriggerPolicy(TriggerConfig())
    policy.trained(0, initial=True)
    quiet = policy.decide(1, accuracy=0.9, labelled=10, detections=[FakeAlarm(False)])
    assert not quiet.retrain and quiet.reason == "no trigger fired"
    loud = policy.decide(2, 0.9, 10, [FakeAlarm(True, "site 3 error up")])
    assert loud.retrain and "site 3 error up" in loud.reason


def test_periodic_fires_every_period() -> None:
    policy = TriggerPolicy(TriggerConfig(on_drift=False, every=1))
    assert _run(policy, 6, accuracy=0.9, labelled=1) == [1, 2, 3, 4, 5]


def test_oracle_fires_exactly_at_change_points() -> None:
    policy = TriggerPolicy(TriggerConfig(on_drift=False, on_change_points=True), [3, 6, 9])
    assert _run(policy, 12, accuracy=0.9, labelled=1) == [3, 6, 9]


def test_performance_floor_and_data_volume() -> None:
    floor = TriggerPolicy(TriggerConfig(on_drift=False, performance_floor=0.8))
    floor.trained(0, initial=True)
    assert not floor.decide(1, accuracy=0.85, labelled=1).retrain
    decision = floor.decide(2, accuracy=0.7, labelled=1)
    assert decision.retrain and "0.7000 < floor 0.8" in decision.reason
    volume = TriggerPolicy(TriggerConfig(on_drift=False, min_new_labels=250))
    assert _run(volume, 10, accuracy=0.9, labelled=100) == [3, 6, 9]


def test_cooldown_and_cap_hold_back_and_say_so() -> None:
    policy = TriggerPolicy(TriggerConfig(cooldown=2, max_retrains=2))
    policy.trained(0, initial=True)
    alarm = [FakeAlarm(True)]
    held = policy.decide(1, 0.9, 1, alarm)
    assert not held.retrain and "cooldown" in held.reason and held.causes
    assert policy.decide(3, 0.9, 1, alarm).retrain
    policy.trained(3)
    assert policy.decide(6, 0.9, 1, alarm).retrain
    policy.trained(6)
    capped = policy.decide(10, 0.9, 1, alarm)
    assert not capped.retrain and "max_retrains" in capped.reason


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"every": 0}, "policy.every=0"),
        ({"performance_floor": 1.5}, "policy.performance_floor=1.5"),
        ({"cooldown": -1}, "policy.cooldown=-1"),
        ({"min_new_labels": 0}, "policy.min_new_labels=0"),
    ],
)
def test_bad_policy_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        TriggerConfig(**kwargs)


def test_detection_scoring() -> None:
    # a change caught late, one missed, and alarms with no change behind them
    score = score_detections([4, 8], alarms=[1, 5, 6], num_periods=12)
    assert score.delays == [1, None]
    assert score.missed == 1
    assert score.false_alarms == 2
    assert score_detections([], [2, 3], 5).false_alarms == 2

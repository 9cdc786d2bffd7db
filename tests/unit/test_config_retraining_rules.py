"""The settings of issue 17, items 3 to 5, are checked when the config is composed, each problem
named with its fix: ``policy.windows``, ``policy.timezone``, ``policy.max_rounds_per_day``,
``release.group_margin``, ``release.memory_periods``, ``release.forgetting_margin`` and
``retrain.rehearsal_periods``."""

from __future__ import annotations

import pytest

from fedretrain.config import compose
from fedretrain.errors import ConfigError
from fedretrain.preflight import to_typed

DEPLOYED = ["scenario=deployed"]


def problems(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        to_typed(compose(overrides), build_targets=False)
    return "\n".join(err.value.problems)


def test_a_deployment_takes_windows_a_time_zone_and_a_budget() -> None:
    run = to_typed(
        compose(
            [
                *DEPLOYED,
                "policy.windows=[22:00-06:00,12:00-13:00]",
                "policy.timezone=Europe/Berlin",
                "policy.max_rounds_per_day=40",
            ]
        ),
        build_targets=False,
    )
    assert run.policy.windows == ["22:00-06:00", "12:00-13:00"]
    assert (run.policy.timezone, run.policy.max_rounds_per_day) == ("Europe/Berlin", 40)


def test_bad_windows_time_zones_and_budgets_are_named() -> None:
    text = problems(
        [
            *DEPLOYED,
            "policy.windows=[22-06,10:00-10:00]",
            "policy.timezone=Mars/Olympus",
            "policy.max_rounds_per_day=5",
            "retrain.max_rounds=20",
        ]
    )
    assert "'22-06' is not a window HH:MM-HH:MM" in text
    assert "'10:00-10:00' is empty" in text
    assert "'Mars/Olympus' is not an IANA time zone" in text
    assert "policy.max_rounds_per_day=5 is below retrain.max_rounds=20" in text


def test_a_simulation_has_no_wall_clock_for_windows() -> None:
    text = problems(["scenario=sea_thresholds", "policy.windows=[22:00-06:00]"])
    assert "apply to a deployment (scenario=deployed" in text
    assert "apply to a deployment" in problems(["policy.max_rounds_per_day=100"])


def test_a_clustered_deployment_refuses_windows_for_now() -> None:
    text = problems([*DEPLOYED, "adaptation=clustered", "policy.windows=[22:00-06:00]"])
    assert "adaptation=clustered: a clustered run's retrains are not scheduled" in text


def test_a_clustered_run_refuses_a_group_margin_for_now() -> None:
    text = problems(["scenario=sine_staggered", "adaptation=clustered", "release.group_margin=0.1"])
    assert "release.group_margin with adaptation=clustered" in text


def test_memory_and_rehearsal_settings_are_checked() -> None:
    assert "set release.memory_periods" in problems(
        ["scenario=sea_recurring", "release.forgetting_margin=0.05"]
    )
    assert "only a drift scenario has" in problems(["release.memory_periods=3"])
    assert "only a drift scenario has" in problems(["retrain.rehearsal_periods=2"])
    clustered = problems(
        ["scenario=sine_staggered", "adaptation=clustered", "retrain.rehearsal_periods=2"]
    )
    assert "retrain.rehearsal_periods with adaptation=clustered" in clustered
    assert "rehearsal_periods=-1: must be >= 0" in problems(
        ["scenario=sea_recurring", "retrain.rehearsal_periods=-1"]
    )
    run = to_typed(
        compose(
            [
                "scenario=sea_recurring",
                "release.memory_periods=3",
                "release.forgetting_margin=0.05",
                "retrain.rehearsal_periods=2",
            ]
        ),
        build_targets=False,
    )
    assert (run.release.memory_periods, run.retrain.rehearsal_periods) == (3, 2)

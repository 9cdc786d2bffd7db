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


# ---------------------------------------------------------------- item 2: retrain.strategy


def test_the_strategies_and_candidates_are_read() -> None:
    run = to_typed(
        compose(
            [
                "scenario=sea_thresholds",
                "retrain.candidates=[full,incremental,transfer]",
                "retrain.buffer_periods=3",
                "retrain.anchor_mu=0.1",
            ]
        ),
        build_targets=False,
    )
    assert run.retrain.strategy.value == "auto"
    assert run.retrain.candidates == ["full", "incremental", "transfer"]
    assert (run.retrain.buffer_periods, run.retrain.anchor_mu) == (3, 0.1)
    assert to_typed(compose(["retrain.strategy=transfer"]), build_targets=False)


def test_bad_candidates_and_values_are_named() -> None:
    text = problems(
        [
            "retrain.candidates=[incremental,reuse,incremental]",
            "retrain.buffer_periods=0",
            "retrain.anchor_mu=-1",
        ]
    )
    assert "'reuse' is not a strategy that trains" in text
    assert "names a strategy twice" in text
    assert "retrain.buffer_periods=0: must be >= 1" in text
    assert "retrain.anchor_mu=-1.0: must be >= 0" in text
    assert "name at least one of" in problems(["retrain.candidates=[]"])


def test_an_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(Exception) as err:
        compose(["retrain.strategy=distill"])
    assert "expected one of [auto, incremental, full, transfer, reuse]" in str(err.value.__cause__)


def test_strategies_that_do_not_combine_are_refused() -> None:
    tournament = "retrain.candidates=[incremental,full]"
    assert "its server optimizer keeps one state" in problems(
        ["scenario=sea_thresholds", tournament, "strategy=fedadam"]
    )
    assert "transfer trains the head alone" in problems(
        ["task=digits_cnn", "retrain.strategy=transfer", "train.lr_groups=[features:0.1]"]
    )
    assert "strategies are not combined with clusters" in problems(
        ["scenario=sine_staggered", "adaptation=clustered", tournament]
    )
    assert "use one of them" in problems(
        ["scenario=sea_thresholds", "strategy=fedprox", "retrain.anchor_mu=0.1"]
    )
    assert "a static run has no retrains" in problems(["retrain.anchor_mu=0.1"])
    assert "this strategy does not fine-tune" in problems(
        ["scenario=sea_thresholds", "retrain.strategy=full", "retrain.anchor_mu=0.1"]
    )


def test_transfer_needs_a_backbone_and_a_trainable_head() -> None:
    def built(overrides: list[str]) -> str:
        with pytest.raises(ConfigError) as err:
            to_typed(compose(overrides))
        return "\n".join(err.value.problems)

    assert "has no layer before its head" in built(
        ["scenario=sea_thresholds", "retrain.strategy=transfer", "task.model.hidden=[]"]
    )
    assert "train.freeze freezes net.3.weight, net.3.bias" in built(
        ["scenario=sea_thresholds", "retrain.candidates=[incremental,transfer]",
         "train.freeze=[net.3]"]
    )  # fmt: skip
    assert to_typed(compose(["scenario=sea_thresholds", "retrain.strategy=transfer"]))

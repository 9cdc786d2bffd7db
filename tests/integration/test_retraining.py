"""Drift scenarios on Flower's simulation engine: the monitor catches the change, the retrain
recovers, bad statistics are rejected while the run goes on, and a recurring concept is served
again by reusing the stored model."""

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

Simulate = Callable[..., Path]  # the `simulate` fixture of conftest.py


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory: pytest.TempPathFactory, simulate: Simulate) -> Path:
    """SINE's labels flip at period 5 of 8; two of ten sites send malformed statistics."""
    return simulate(
        tmp_path_factory.mktemp("flip"),
        "scenario=sine_flip",
        "scenario.num_periods=8",
        "attack=bad_stats",
        "attack.fraction=0.2",
    )


def test_flip_is_detected_at_once_and_the_retrain_recovers(flip_run: Path) -> None:
    timeline = pd.read_csv(flip_run / "timeline.csv")
    assert timeline["period"].tolist() == list(range(8))
    before = timeline.loc[timeline["period"].between(1, 4), "accuracy"]
    assert (before > 0.85).all()  # the initial model serves the first concept well
    at_change = timeline.set_index("period").loc[5]
    assert at_change["change_point"] and at_change["accuracy"] < 0.3  # labels flipped
    assert at_change["retrain"] and at_change["alarms"]  # detected with delay 0
    after = timeline.loc[timeline["period"] > 5, "accuracy"]
    assert (after > 0.85).all()  # the retrained model serves the new concept
    assert not timeline.loc[timeline["period"].between(1, 4), "retrain"].any()
    summary = json.loads((flip_run / "summary.json").read_text())
    assert summary["detection_delays"] == [0] and summary["false_alarms"] == 0
    assert (flip_run / "timeline.png").stat().st_size > 0
    assert (flip_run / "models" / "v2.safetensors").exists()


def test_every_decision_is_logged_with_its_reason(flip_run: Path) -> None:
    lines = (flip_run / "decisions.jsonl").read_text().splitlines()
    decisions = [json.loads(line) for line in lines]  # strict JSON: no NaN
    assert [d["period"] for d in decisions] == list(range(1, 8))
    assert all(d["reason"] for d in decisions)
    fired = [d for d in decisions if d["retrain"]]
    assert [d["period"] for d in fired] == [5]
    assert "binomial error" in fired[0]["reason"] or "chi2" in fired[0]["reason"]


def test_malformed_statistics_are_rejected_and_recorded(flip_run: Path) -> None:
    timeline = pd.read_csv(flip_run / "timeline.csv")
    assert (timeline["sites"] == 8).all() and (timeline["rejected"] == 2).all()
    rejections = pd.read_csv(flip_run / "rejections.csv")
    monitor = rejections[rejections["phase"].str.startswith("monitor")]
    assert len(monitor) == 2 * 8
    assert monitor["reason"].str.contains("hist has negative counts|non-finite").all()


def test_recurring_concept_is_served_again_by_reuse(tmp_path: Path, simulate: Simulate) -> None:
    """SINE flips at period 4 and flips back at period 7: the model stored at period 0 wins on
    period 7's data and serves again with no training round. The oracle policy retrains at the
    true change points, so this checks the reuse itself."""
    run = simulate(
        tmp_path,
        "scenario=sine_flip",
        "scenario.num_periods=9",
        "scenario.schedule._target_=fedretrain.drift.schedule.recurring",
        "scenario.schedule.at=[4,7]",
        "scenario.schedule.concepts=[0,1,0]",
        "policy=oracle",
    )
    timeline = pd.read_csv(run / "timeline.csv").set_index("period")
    assert timeline.loc[4, "retrain"] and timeline.loc[4, "rounds"] > 0
    back = timeline.loc[7]
    assert back["retrain"] and back["action"] == "reuse v1" and back["rounds"] == 0
    assert back["serving_version"] == 1
    assert timeline.loc[8, "accuracy"] > 0.9  # served well again, without a training round

"""Retraining windows and a daily round budget (issue 17, item 5), through the retraining core
on the numpy federation: a trigger outside every window waits, the decision log says why, and
the retrain runs at the first period a window is open; a day's budget holds a retrain to the
next day; a run killed while a trigger waits resumes to the same end. The clock is the test's:
each period starts a fixed number of hours after the one before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import Controller, FakeFederation, MakeController, run_killed, versions

from fedretrain.monitor.trigger import TriggerConfig

SITES = 4
HOUR = 3600.0
# One concept change, at period 3: the oracle policy fires there.
CONCEPTS = np.array([[0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]] * SITES)


def policy(**windows: object) -> TriggerConfig:
    return TriggerConfig(name="oracle", on_drift=False, on_change_points=True, **windows)


class Clock:
    """Period p starts at ``start + p * step`` (Unix seconds, 1970-01-01 is a UTC day),
    whichever life of a killed run asks: the period comes from the controller's state."""

    def __init__(self, start_hour: float, step_hours: float) -> None:
        self.start, self.step = start_hour * HOUR, step_hours * HOUR
        self.controller: Controller | None = None

    def __call__(self) -> float:
        assert self.controller is not None
        return self.start + self.step * (self.controller.state.completed_period + 1)


def run(make_controller: MakeController, run_dir: Path, clock: Clock, **kw: object) -> Path:
    controller, _ = make_controller(CONCEPTS, run_dir=run_dir, clock=clock, **kw)
    clock.controller = controller
    controller.run()
    return run_dir


def timeline(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "timeline.csv", keep_default_na=False)  # "" stays ""


def decisions(run_dir: Path) -> dict[int, dict[str, object]]:
    lines = (run_dir / "decisions.jsonl").read_text().splitlines()
    return {int(r["period"]): r for r in map(json.loads, lines)}


def test_a_trigger_outside_the_windows_waits_for_the_next_one(
    make_controller: MakeController, tmp_path: Path
) -> None:
    # Periods every 3 hours from 00:00: period 3 at 09:00 ... period 8 at 00:00 (a window).
    clock = Clock(0, 3)
    out = run(make_controller, tmp_path / "run", clock, policy=policy(windows=["22:00-06:00"]))
    rows = timeline(out)
    by_period = rows.set_index("period")
    assert by_period.loc[3, "schedule"] == "wait" and not by_period.loc[3, "retrain"]
    assert list(by_period.loc[4:7, "schedule"]) == ["pending"] * 4
    assert not any(by_period.loc[4:7, "retrain"])
    assert by_period.loc[8, "schedule"] == "waited" and by_period.loc[8, "retrain"]
    assert by_period.loc[8, "reason"].startswith("waited since period 3: oracle")
    logged = decisions(out)
    assert logged[3]["retrain"] is True and logged[3]["schedule"] == "wait"  # the policy fired
    assert "outside the retraining windows 22:00-06:00 (UTC; now 09:00)" in str(
        logged[3]["scheduled"]
    )
    assert "now 21:00" in str(logged[7]["scheduled"])
    retrains = [v for v in versions(out) if v.period > 0]
    assert [v.period for v in retrains] == [8]


def test_without_windows_the_same_trigger_retrains_at_once(
    make_controller: MakeController, tmp_path: Path
) -> None:
    out = run(make_controller, tmp_path / "run", Clock(0, 3), policy=policy())
    rows = timeline(out)
    assert rows.loc[rows.retrain, "period"].tolist() == [0, 3]
    assert set(rows["schedule"]) == {""}
    assert [v.period for v in versions(out) if v.period > 0] == [3]


def test_a_spent_daily_budget_holds_the_retrain_to_the_next_day(
    make_controller: MakeController, tmp_path: Path
) -> None:
    # Hourly from 20:00: period 4 starts the next day. The initial training spends some of
    # day 0's 10 rounds, and a retrain may take 10 (retrain.max_rounds): it waits for day 1.
    clock = Clock(20, 1)
    out = run(
        make_controller,
        tmp_path / "run",
        clock,
        policy=policy(max_rounds_per_day=10),
        retrain={"max_rounds": 10},
    )
    rows = timeline(out).set_index("period")
    assert rows.loc[0, "rounds"] >= 1
    assert rows.loc[3, "schedule"] == "wait"
    assert "today's budget of 10 rounds" in rows.loc[3, "reason"]
    assert rows.loc[4, "schedule"] == "waited" and rows.loc[4, "retrain"]
    assert sum(rows.loc[4:, "rounds"]) <= 10  # day 1's rounds stay in its budget


def test_a_run_killed_while_a_trigger_waits_resumes_to_the_same_end(
    make_controller: MakeController, tmp_path: Path
) -> None:
    windows = policy(windows=["22:00-06:00"])
    whole = run(make_controller, tmp_path / "whole", Clock(0, 3), policy=windows)

    def life(resume: bool, crash_after: int) -> Controller:
        clock = Clock(0, 3)
        controller, _ = make_controller(
            CONCEPTS,
            run_dir=tmp_path / "killed",
            resume=resume,
            clock=clock,
            policy=windows,
            federation=FakeFederation(CONCEPTS, crash_after=crash_after),
        )
        clock.controller = controller
        return controller

    assert run_killed(life, [4, 6, 5]) >= 5
    columns = ["period", "retrain", "reason", "action", "schedule", "serving_version"]
    read = lambda d: timeline(d)[columns]  # noqa: E731
    pd.testing.assert_frame_equal(read(tmp_path / "killed"), read(whole))

"""Retraining windows in a real deployment (issue 17, item 5), in processes on loopback:
``fedretrain server`` and three ``fedretrain agent`` processes, wall-clock periods of 12 s,
the periodic policy (a retrain due every period), and ``policy.windows`` set to an hour that
starts two hours from now. Periods 1 and 2 find the trigger outside every window: they wait,
the decision log and the timeline say so, and no round trains after the first model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from test_deploy_e2e import _taken, _wait, launched  # noqa: F401
from test_deploy_e2e import pytestmark as PYTESTMARK
from test_deploy_faults import SITES, Cli, Drill

from fedretrain.deploy.launch import Launched
from fedretrain.registry import Registry

pytestmark = PYTESTMARK  # the deployment tests' marks and skips


def _window_later() -> str:
    """An hour-long window (UTC) starting two hours from now: the run is never inside it."""
    hour = time.gmtime().tm_hour
    return f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"


def test_a_trigger_outside_the_retraining_windows_waits_in_a_deployment(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
    cli: Cli,
) -> None:
    window = _window_later()
    drill = Drill(
        tmp_path,
        cli,
        launched,
        **{
            "scenario.num_periods": "3",
            "policy.windows": f"[{window}]",
            "policy.timezone": "UTC",
        },
    )
    server = drill.server()
    _wait("sites registered", lambda: "site site-2:" in server.tail(), 90, server)
    agents = [drill.agent(i) for i in range(SITES)]
    for p in (1, 2):

        def taken(p: int = p) -> bool:
            return all(p - 1 in _taken(f) for f in drill.folders)

        _wait(f"period {p - 1} taken", taken, 150, server, *agents)
        drill.drop(p)
    _wait("run finished", lambda: not server.alive(), 240, server, *agents)
    assert server.proc.returncode == 0, server.tail(6000)

    decisions = [json.loads(line) for line in (drill.run_dir / "decisions.jsonl").open()]
    held = {d["period"]: d for d in decisions if d.get("schedule")}
    assert sorted(held) == [1, 2], decisions
    for d in held.values():
        assert d["schedule"] == "wait" and d["retrain"] is True  # the policy fired; it waits
        assert f"outside the retraining windows {window} (UTC; now" in d["scheduled"]
    timeline = pd.read_csv(drill.timeline).set_index("period")
    assert timeline.loc[[1, 2], "schedule"].tolist() == ["wait", "wait"]
    assert not timeline.loc[[1, 2], "retrain"].any()
    assert timeline.loc[[1, 2], "rounds"].tolist() == [0, 0]
    with Registry(drill.run_dir) as registry:
        assert [v.trigger for v in registry.versions()] == ["initial"]

"""Deployment fault drills (issue 18, item 7), in real processes on loopback: ``fedretrain
server`` and three ``fedretrain agent`` processes, wall-clock periods, a retrain every period.

A site lost mid-period and offline for three periods, then back:

Site 2's agent is killed (SIGKILL, with its SuperNode) as soon as it has taken period 1's file,
while period 1's statistics and training are under way. The federation goes on with the two
others through periods 1 to 4 (the round has its quorum), and site 2's agent, started again on
the same folder once period 4 is done, takes part again before the end. Nothing is read twice,
the registry's invariants hold, and the run ends as configured.

The server (its SuperLink and everything it started) killed in the middle of a retrain's
rounds and started again on the same run folder and SuperLink database: the run resumes from
the last round's checkpoint and ends, every round recorded once.

Drills of several minutes each: not in the default run (``pytest -m faults`` runs them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from test_deploy_e2e import _port, _rows, _sea_csv, _taken, _wait, launched  # noqa: F401

from fedretrain.deploy.launch import Launched
from fedretrain.registry import Registry

BIN = Path(sys.executable).parent
SITES, PERIODS, LOST = 3, 8, 2
BACK = 5  # the first period site 2's agent may serve again
Cli = Callable[..., CompletedProcess[str]]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.deploy,
    pytest.mark.faults,
    pytest.mark.skipif(not Path("/proc").exists(), reason="process trees are read from /proc"),
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="flower-superlink not beside python"
    ),
]


class Drill:
    """A federation of SITES agents and a server on loopback, each site with period 0's file."""

    def __init__(self, tmp_path: Path, cli: Cli, started: list[Launched], **settings: str):
        self.launched = started
        self.creds, self.run_dir, self.logs = (
            tmp_path / "creds",
            tmp_path / "run",
            tmp_path / "logs",
        )
        assert cli("certs", "init", self.creds).returncode == 0
        names = [f"site-{i}" for i in range(SITES)]
        assert cli("certs", "site", self.creds, *names).returncode == 0
        self.folders = [tmp_path / f"data-{i}" for i in range(SITES)]
        for i, folder in enumerate(self.folders):
            folder.mkdir()
            _sea_csv(folder / "p0.csv", 150, seed=i)
        self.port = _port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        overrides = {
            "scenario": "deployed", "scenario.num_periods": str(PERIODS),
            "scenario.period_seconds": "12", "scenario.stream.min_age_s": "0",
            "monitor.reference_periods": "1", "policy": "periodic", "retrain.max_rounds": "1",
            "retrain.reuse_stored": "false", "validation.reply_timeout_s": "60", **settings,
        }  # fmt: skip
        self.server_command = [
            sys.executable, "-m", "fedretrain.cli", "server", "--run-dir", str(self.run_dir),
            "--creds", str(self.creds), "--port", str(self.port),
            *(f"{k}={v}" for k, v in overrides.items()),
        ]  # fmt: skip
        self.timeline = self.run_dir / "timeline.csv"

    def server(self, log: str = "server.log") -> Launched:
        process = Launched.start("server", self.server_command, self.env, self.logs / log)
        self.launched.append(process)
        return process

    def agent(self, site: int) -> Launched:
        process = Launched.start(
            f"site-{site}",
            [
                sys.executable, "-m", "fedretrain.cli", "agent", "--superlink",
                f"127.0.0.1:{self.port}", "--data", str(self.folders[site]),
                "--site-id", str(site), "--ca", str(self.creds / "ca.crt"),
                "--key", str(self.creds / f"site-{site}.key"), "--runtime-port", str(_port()),
            ],
            self.env,
            self.logs / f"site-{site}.log",
        )  # fmt: skip
        self.launched.append(process)
        return process

    def drop(self, period: int, sites: range | list[int] = range(SITES)) -> None:
        for i in sites:
            _sea_csv(self.folders[i] / f"p{period}.csv", 150, seed=10 * period + i)


def test_a_site_killed_mid_period_and_away_three_periods_rejoins(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
    cli: Cli,
) -> None:
    drill = Drill(tmp_path, cli, launched)
    folders, run_dir, timeline = drill.folders, drill.run_dir, drill.timeline
    server = drill.server()
    agent = drill.agent
    agents = {i: agent(i) for i in range(SITES)}
    _wait("period 0 taken", lambda: all(0 in _taken(f) for f in folders), 180, server)
    drill.drop(1)
    _wait("site 2 took period 1", lambda: 1 in _taken(folders[LOST]), 120, server)
    agents[LOST].stop(kill=True)  # in the middle of period 1
    assert not agents[LOST].running()

    for period in range(2, PERIODS):
        _wait(
            f"period {period - 1} done",
            lambda p=period: len(_rows(timeline)) >= p,
            180, server, *agents.values(),
        )  # fmt: skip
        if period == BACK:
            agents[LOST] = agent(LOST)  # back, on the same folder
        drill.drop(period, [i for i in range(SITES) if i != LOST or period >= BACK])
    _wait("run finished", lambda: not server.alive(), 240, server, *agents.values())
    assert server.proc.returncode == 0, server.tail(6000)

    rows = _rows(timeline).set_index("period")
    assert list(rows.index) == list(range(PERIODS))
    assert rows.loc[0, "sites"] == SITES
    assert rows.loc[2:4, "sites"].tolist() == [SITES - 1] * 3  # the federation went on
    assert rows.loc[PERIODS - 1, "sites"] == SITES  # and site 2 is back
    assert rows["retrain"].all() and (rows["rounds"] > 0).all()
    taken = _taken(folders[LOST])
    assert {0, 1, PERIODS - 1} <= taken and not taken & {2, 3, 4}  # away three periods
    for i in range(SITES):
        if i != LOST:
            assert _taken(folders[i]) == set(range(PERIODS))
    with Registry(run_dir) as registry:
        assert registry.check_invariants() == []
        assert len(registry.versions()) >= PERIODS
    log = server.tail(10**7)
    assert "Traceback" not in log, log[-4000:]


def test_the_server_killed_mid_retrain_resumes_with_every_round_once(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
    cli: Cli,
) -> None:
    drill = Drill(
        tmp_path, cli, launched, **{"scenario.num_periods": "3", "retrain.max_rounds": "3"}
    )
    server = drill.server("server-1.log")
    agents = [drill.agent(i) for i in range(SITES)]
    metrics = drill.run_dir / "metrics.csv"
    _wait("period 0 done", lambda: len(_rows(drill.timeline)) >= 1, 240, server, *agents)
    initial_rounds = len(_rows(metrics))
    drill.drop(1)
    # Killed once period 1's retrain has finished a round and goes on with the next.
    _wait("period 1's first round", lambda: len(_rows(metrics)) > initial_rounds, 240, server)
    server.stop(kill=True)
    assert len(_rows(drill.timeline)) == 1  # period 1 was under way
    restarted = drill.server("server-2.log")
    _wait("period 1 done", lambda: len(_rows(drill.timeline)) >= 2, 240, restarted, *agents)
    drill.drop(2)
    _wait("run finished", lambda: not restarted.alive(), 240, restarted, *agents)
    assert restarted.proc.returncode == 0, restarted.tail(6000)
    assert "resuming the run" in restarted.tail(10**7)
    assert all(a.alive() for a in agents)

    rounds = _rows(metrics)["round"].tolist()
    assert rounds == list(range(1, len(rounds) + 1)), rounds  # every round once, none lost
    periods = _rows(drill.timeline).set_index("period")
    assert list(periods.index) == [0, 1, 2] and (periods["sites"] == SITES).all()
    assert sum(periods["rounds"]) == len(rounds)
    for folder in drill.folders:
        assert _taken(folder) == {0, 1, 2}  # nothing read twice
    with Registry(drill.run_dir) as registry:
        assert registry.check_invariants() == []
        assert len(registry.versions()) == 3

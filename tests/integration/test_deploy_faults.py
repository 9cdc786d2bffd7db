"""A site lost mid-period and offline for three periods, then back (issue 18, item 7), in real
processes on loopback: ``fedretrain server`` and three ``fedretrain agent`` processes, wall-clock
periods, a retrain every period.

Site 2's agent is killed (SIGKILL, with its SuperNode) as soon as it has taken period 1's file,
while period 1's statistics and training are under way. The federation goes on with the two
others through periods 1 to 4 (the round has its quorum), and site 2's agent, started again on
the same folder once period 4 is done, takes part again before the end. Nothing is read twice,
the registry's invariants hold, and the run ends as configured.

A fault drill of several minutes: not in the default run (``pytest -m faults`` runs it).
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


def test_a_site_killed_mid_period_and_away_three_periods_rejoins(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
    cli: Cli,
) -> None:
    creds, run_dir, logs = tmp_path / "creds", tmp_path / "run", tmp_path / "logs"
    assert cli("certs", "init", creds).returncode == 0
    names = [f"site-{i}" for i in range(SITES)]
    assert cli("certs", "site", creds, *names).returncode == 0
    folders = [tmp_path / f"data-{i}" for i in range(SITES)]
    for i, folder in enumerate(folders):
        folder.mkdir()
        _sea_csv(folder / "p0.csv", 150, seed=i)
    port = _port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = Launched.start(
        "server",
        [
            sys.executable, "-m", "fedretrain.cli", "server", "--run-dir", str(run_dir),
            "--creds", str(creds), "--port", str(port),
            "scenario=deployed", f"scenario.num_periods={PERIODS}", "scenario.period_seconds=12",
            "scenario.stream.min_age_s=0", "monitor.reference_periods=1", "policy=periodic",
            "retrain.max_rounds=1", "retrain.reuse_stored=false",
            "validation.reply_timeout_s=60",
        ],
        env,
        logs / "server.log",
    )  # fmt: skip
    launched.append(server)

    def agent(site: int) -> Launched:
        process = Launched.start(
            f"site-{site}",
            [
                sys.executable, "-m", "fedretrain.cli", "agent", "--superlink",
                f"127.0.0.1:{port}", "--data", str(folders[site]), "--site-id", str(site),
                "--ca", str(creds / "ca.crt"), "--key", str(creds / f"site-{site}.key"),
                "--runtime-port", str(_port()),
            ],
            env,
            logs / f"site-{site}.log",
        )  # fmt: skip
        launched.append(process)
        return process

    agents = {i: agent(i) for i in range(SITES)}
    timeline = run_dir / "timeline.csv"
    _wait("period 0 taken", lambda: all(0 in _taken(f) for f in folders), 180, server)
    for i in range(SITES):
        _sea_csv(folders[i] / "p1.csv", 150, seed=10 + i)
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
        for i in range(SITES):
            if i != LOST or period >= BACK:
                _sea_csv(folders[i] / f"p{period}.csv", 150, seed=10 * period + i)
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

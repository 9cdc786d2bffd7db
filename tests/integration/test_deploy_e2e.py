"""The deployment end to end, in real processes on loopback, as an operator would run it.

``fedretrain certs`` makes the credentials; ``fedretrain server`` runs a SuperLink with TLS and
SuperNode authentication and submits the retraining app; three ``fedretrain agent`` processes
serve three site folders of CSV files. Wall-clock monitoring periods:

- period 0: every site has a file of SEA data (θ = 8); the first model trains;
- period 1: new files of the same concept, and a malformed CSV at site 2 (quarantined and
  reported, the rest goes on); a fourth agent with an unregistered key is refused (it waits
  to be registered, and takes no part);
- the server is killed (SIGKILL, with the SuperLink and what it started) and started again on
  the same run folder: it resumes after period 1;
- period 2: sites 0 and 1 receive files whose labels are flipped, site 2 nothing: the monitor
  alarms, a retrain on the drifted sites' data passes the gate and is promoted.

A file is dropped once every site has taken the previous period (its folder's state file says
so), so the test does not race the server's clock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pandas as pd
import pytest

from fedretrain.deploy.folder import STATE_FILE
from fedretrain.deploy.launch import Launched
from fedretrain.registry import Registry

BIN = Path(sys.executable).parent
SITES = 3
Cli = Callable[..., CompletedProcess[str]]  # the `cli` fixture of conftest.py

pytestmark = [
    pytest.mark.integration,
    pytest.mark.deploy,
    pytest.mark.skipif(not Path("/proc").exists(), reason="process trees are read from /proc"),
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="flower-superlink not beside python"
    ),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sea_csv(path: Path, n: int, seed: int, flipped: bool = False) -> None:
    """SEA rows (x ~ U[0,10]^3, y = x0 + x1 > 8), written elsewhere and renamed in."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (n, 3))
    y = (x[:, 0] + x[:, 1] > 8).astype(int)
    frame = pd.DataFrame(
        {"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": 1 - y if flipped else y}
    )
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _taken(folder: Path) -> set[int]:
    """The periods a site folder has handed out."""
    try:
        return {int(p) for p in json.loads((folder / STATE_FILE).read_text())["periods"]}
    except (OSError, ValueError, KeyError):
        return set()


def _wait(what: str, condition: object, timeout_s: float, *logs: Launched) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.25)
    tails = "\n\n".join(f"--- {p.name} ---\n{p.tail(4000)}" for p in logs)
    pytest.fail(f"{what}: not within {timeout_s} s\n{tails}")


@pytest.fixture
def launched() -> Iterator[list[Launched]]:
    started: list[Launched] = []
    yield started
    for process in started:
        process.stop()
    assert not [p.name for p in started if p.alive()]


def test_three_sites_drift_retrain_promote_across_a_server_restart(
    tmp_path: Path, launched: list[Launched], cli: Cli
) -> None:
    began = time.monotonic()
    creds, run_dir, logs = tmp_path / "creds", tmp_path / "run", tmp_path / "logs"
    assert cli("certs", "init", creds).returncode == 0
    names = [f"site-{i}" for i in range(SITES)]
    assert cli("certs", "site", creds, *names).returncode == 0
    assert cli("certs", "site", tmp_path / "rogue", "rogue").returncode == 0  # not registered
    folders = [tmp_path / f"data-{i}" for i in range(SITES)]
    for i, folder in enumerate(folders):
        folder.mkdir()
        _sea_csv(folder / "p0.csv", 150, seed=i)

    port = _port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server_command = [
        sys.executable, "-m", "fedretrain.cli", "server", "--run-dir", str(run_dir),
        "--creds", str(creds), "--port", str(port),
        "scenario=deployed", "scenario.num_periods=3", "scenario.period_seconds=15",
        "scenario.stream.min_age_s=0", "monitor.reference_periods=1",
        "retrain.max_rounds=2", "retrain.reuse_stored=false",
    ]  # fmt: skip

    def start_server(log: str) -> Launched:
        server = Launched.start("server", server_command, env, logs / log)
        launched.append(server)
        return server

    def agent(name: str, site: int, key: Path, data: Path) -> Launched:
        command = [
            sys.executable, "-m", "fedretrain.cli", "agent", "--superlink", f"127.0.0.1:{port}",
            "--data", str(data), "--site-id", str(site), "--ca", str(creds / "ca.crt"),
            "--key", str(key), "--runtime-port", str(_port()),
        ]  # fmt: skip
        process = Launched.start(name, command, env, logs / f"{name}.log")
        launched.append(process)
        return process

    server = start_server("server-1.log")
    _wait("sites registered", lambda: "site site-2:" in server.tail(), 90, server)
    agents = [agent(names[i], i, creds / f"{names[i]}.key", folders[i]) for i in range(SITES)]

    # An unregistered key: the SuperLink refuses it, and its agent waits to be registered
    # (which this one never is: it takes no part in the run).
    rogue_data = tmp_path / "data-rogue"
    rogue_data.mkdir()
    rogue = agent("rogue", 7, tmp_path / "rogue" / "rogue.key", rogue_data)
    _wait("rogue refused", lambda: "[code: 2004]" in rogue.tail(), 60, rogue)
    _wait("rogue waits", lambda: "waiting for the server" in rogue.tail(), 60, rogue)

    # Period 1: the same concept everywhere, and a malformed file at site 2.
    _wait("period 0 taken", lambda: all(0 in _taken(f) for f in folders), 120, server, *agents)
    for i, folder in enumerate(folders):
        _sea_csv(folder / "p1.csv", 150, seed=10 + i)
    (folders[2] / "broken.csv").write_text("x0,x1,label\n1,2,0\n3,4,1\n")

    # Kill the whole server (SuperLink and its children included) once period 1 is done.
    _wait("period 1 taken", lambda: all(1 in _taken(f) for f in folders), 150, server, *agents)
    timeline = run_dir / "timeline.csv"
    _wait("period 1 done", lambda: len(_rows(timeline)) >= 2, 150, server, *agents)
    for i in (0, 1):  # the drift arrives while the server is down
        _sea_csv(folders[i] / "p2.csv", 150, seed=20 + i, flipped=True)
    server.stop(kill=True)
    assert not server.alive()

    restarted = start_server("server-2.log")
    _wait("run finished", lambda: not restarted.alive(), 240, restarted, *agents)
    assert restarted.proc.returncode == 0, restarted.tail(6000)
    assert "resuming the run" in restarted.tail(100_000)
    assert all(a.alive() for a in agents)  # the sites rode out the restart
    assert not _taken(rogue_data)  # the refused site was never asked for a period

    rows = _rows(timeline)
    assert list(rows["period"]) == [0, 1, 2]
    assert rows["retrain"].tolist() == [True, False, True]
    drift = rows.iloc[2]
    assert isinstance(drift["alarms"], str) and drift["alarms"], drift.to_dict()
    assert drift["sites"] == 2  # site 2 had no new file: nothing to report, nothing to train
    assert drift["serving_version"] == 2, drift.to_dict()

    with Registry(run_dir) as registry:
        assert registry.check_invariants() == []
        assert [v.version for v in registry.versions()] == [1, 2]
        assert registry.champion().version == 2  # type: ignore[union-attr]
        promotions = [e.version for e in registry.events(kind="promote")]
        gate = registry.events(kind="gate")
    assert promotions == [1, 2]
    assert [e.payload["promote"] for e in gate] == [True]
    counted = {r["site"] for r in gate[0].payload["rows"] if r["counted"]}
    assert counted == {0, 1}

    rejections = pd.read_csv(run_dir / "rejections.csv")
    quarantined = rejections[rejections["phase"] == "data p1"]["reason"].tolist()
    assert len(quarantined) == 1 and "site 2: quarantined broken.csv" in quarantined[0]
    assert "missing columns" in quarantined[0]
    no_data = rejections[rejections["phase"] == "no data"]
    assert len(no_data) >= 1 and no_data["reason"].str.contains("period 2").all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "false_alarms" not in summary  # the true change points are unknown in deployment
    assert summary["site_data_problems"] == 1 and summary["serving_version"] == 2
    print(f"end to end: {time.monotonic() - began:.0f} s")


def _rows(timeline: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(timeline)
    except (OSError, pd.errors.EmptyDataError):
        return pd.DataFrame({"period": []})

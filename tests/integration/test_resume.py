"""Crash-safe resume: a drift run killed with SIGKILL at random moments across its retraining
cycle resumes every time, keeps the registry's invariants, and ends with the same registry as
an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedretrain.registry import Registry

pytestmark = pytest.mark.integration

SCENARIO = [
    "scenario=sine_flip",
    "scenario.num_periods=7",
    "runtime.num_clients=4",
    "retrain.max_rounds=8",
]
KILLS = 10


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    # A session of its own, so that a kill takes Ray's processes down with the run.
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _simulate(run_dir: Path) -> list[str]:
    return ["-m", "fedretrain", *SCENARIO, f"hydra.run.dir={run_dir}"]


def _resume(run_dir: Path) -> list[str]:
    return ["-m", "fedretrain.cli", "resume", str(run_dir)]


def _position(run_dir: Path) -> tuple[int, int]:
    try:
        state = json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return (-2, -1)
    return (state["completed_period"], state["server_round"])


def _kill_at(
    proc: subprocess.Popen[bytes], run_dir: Path, server_round: int, rng: np.random.Generator
) -> None:
    """SIGKILL the run a random moment after it checkpointed training round ``server_round``."""
    deadline = time.monotonic() + 300
    while _position(run_dir)[1] < server_round:
        assert proc.poll() is None, f"the run ended before round {server_round}"
        assert time.monotonic() < deadline, "the run made no progress in 300 s"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3))  # mid-round, mid-period or between: wherever it is
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _registry(run_dir: Path) -> list[dict[str, object]]:
    with Registry(run_dir) as registry:
        assert registry.check_invariants() == []
        return [v.to_dict() for v in registry.versions()]


def test_killed_ten_times_the_run_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _start(_simulate(reference)).wait(timeout=600) == 0

    rounds = int(pd.read_csv(reference / "metrics.csv")["round"].max())
    rng = np.random.default_rng(7)
    targets = np.sort(rng.choice(np.arange(1, rounds), size=KILLS, replace=False))

    run_dir = tmp_path / "killed"
    proc = _start(_simulate(run_dir))
    for target in targets:
        _kill_at(proc, run_dir, int(target), rng)
        if (run_dir / "registry.sqlite").exists():
            _registry(run_dir)  # invariants hold after every kill
        proc = _start(_resume(run_dir))
    assert proc.wait(timeout=600) == 0

    expected, got = _registry(reference), _registry(run_dir)
    assert len(got) == len(expected) >= 2
    for mine, theirs in zip(got, expected, strict=True):
        for key in ("version", "parent", "period", "rounds", "trigger", "status", "sha256"):
            assert mine[key] == theirs[key], (key, mine, theirs)
        assert mine["metrics"] == pytest.approx(theirs["metrics"], abs=1e-9)
    for name, key in (("timeline.csv", "period"), ("metrics.csv", "round")):
        ours, ref = pd.read_csv(run_dir / name), pd.read_csv(reference / name)
        assert ours[key].tolist() == ref[key].tolist()  # nothing lost, nothing twice
        assert np.allclose(ours["accuracy"], ref["accuracy"], equal_nan=True)
    decisions = (run_dir / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(d)["period"] for d in decisions] == list(range(1, 7))


def test_a_killed_static_run_resumes_to_its_last_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "static"
    static = ["runtime.num_clients=3", "runtime.num_rounds=6", f"hydra.run.dir={run_dir}"]
    _kill_at(_start(["-m", "fedretrain", *static]), run_dir, 2, np.random.default_rng(3))
    assert _start(_resume(run_dir)).wait(timeout=600) == 0
    rounds = pd.read_csv(run_dir / "metrics.csv")["round"].tolist()
    assert rounds == list(range(7))  # round 0 is the fresh model; nothing lost, nothing twice
    [version] = _registry(run_dir)
    assert (version["status"], version["rounds"]) == ("champion", 6)
    assert json.loads((run_dir / "summary.json").read_text())["serving_version"] == 1


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    result = subprocess.run(
        [sys.executable, *_resume(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "not a resumable run folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written

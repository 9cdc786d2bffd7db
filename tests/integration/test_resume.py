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
# Sites 0-1 flip at period 2, site 2 at 4, site 3 never: new concepts, moves and a refine.
CLUSTERED = [
    "scenario=sine_staggered",
    "adaptation=clustered",
    "scenario.schedule.matrix=[[0,0,1,1,1,1,1],[0,0,1,1,1,1,1],[0,0,0,0,1,1,1],[0,0,0,0,0,0,0]]",
    *SCENARIO[1:],
]
KILLS = 5  # every kill point of the loop is covered by tests/unit/retraining; this is wiring


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    # A session of its own, so that a kill takes Ray's processes down with the run.
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _simulate(run_dir: Path, scenario: list[str] = SCENARIO) -> list[str]:
    return ["-m", "fedretrain", *scenario, f"hydra.run.dir={run_dir}"]


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


@pytest.mark.parametrize("scenario", [SCENARIO, CLUSTERED], ids=["single", "clustered"])
def test_killed_five_times_the_run_ends_as_an_uninterrupted_one(
    tmp_path: Path, scenario: list[str]
) -> None:
    reference = tmp_path / "reference"
    assert _start(_simulate(reference, scenario)).wait(timeout=600) == 0

    rounds = int(pd.read_csv(reference / "metrics.csv")["round"].max())
    rng = np.random.default_rng(7)
    targets = np.sort(rng.choice(np.arange(1, rounds), size=KILLS, replace=False))

    run_dir = tmp_path / "killed"
    proc = _start(_simulate(run_dir, scenario))
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
    ref_decisions = (reference / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(d)["period"] for d in decisions] == [
        json.loads(d)["period"] for d in ref_decisions
    ]
    assert {json.loads(d)["period"] for d in decisions} == set(range(1, 7))
    if "adaptation=clustered" in scenario:  # each site's cluster and model, every period
        clusters = (run_dir / "clusters.csv").read_text()
        assert clusters == (reference / "clusters.csv").read_text()
        assert len({line.split(",")[2] for line in clusters.splitlines()[1:]}) >= 2
        with Registry(run_dir) as mine, Registry(reference) as theirs:
            assert mine.cluster_champions() == theirs.cluster_champions()


DP_STATIC = ["privacy=dpsgd", "privacy.reproducible=true", "runtime.num_clients=3"]
DP_ROUNDS = 4


def _ledger_rounds(run_dir: Path) -> int:
    """The most rounds any site's ledger has recorded (a static run: one entry a round)."""
    counts = [0]
    for path in (run_dir / "privacy").glob("site-*.json"):
        try:
            counts.append(len(json.loads(path.read_text())["entries"]))
        except (json.JSONDecodeError, KeyError, FileNotFoundError):
            continue  # mid-write: the next poll reads it
    return max(counts)


def _released_everywhere(run_dir: Path, sites: int, server_round: int) -> bool:
    """Whether every site recorded ``server_round`` in its ledger and then cached the update
    it released (the cache is written right after the ledger's entry)."""
    for site in range(sites):
        ledger = run_dir / "privacy" / f"site-{site}.json"
        release = run_dir / "privacy" / f"site-{site}.release.safetensors"
        try:
            entries = len(json.loads(ledger.read_text())["entries"])
            cached = release.stat().st_mtime_ns >= ledger.stat().st_mtime_ns
        except (json.JSONDecodeError, KeyError, FileNotFoundError):
            return False
        if entries < server_round or not cached:
            return False
    return True


def test_a_dp_run_killed_after_its_sites_released_a_round_pays_for_it_once(
    tmp_path: Path,
) -> None:
    """Issue 18, item 1: a site asked again for a round it already released (the server was
    killed before checkpointing it) re-sends that update instead of training and paying ε
    again; the resumed static run ends bit for bit as the uninterrupted one."""
    args = [*DP_STATIC, f"runtime.num_rounds={DP_ROUNDS}"]
    reference = tmp_path / "reference"
    assert _start(["-m", "fedretrain", *args, f"hydra.run.dir={reference}"]).wait(600) == 0
    run_dir = tmp_path / "killed"
    proc = _start(["-m", "fedretrain", *args, f"hydra.run.dir={run_dir}"])
    deadline = time.monotonic() + 300
    # Kill in the window between the sites' release of a round and the server's checkpoint of
    # it (a kill between one site's ledger entry and its cache is the "trained again" case).
    while not ((done := _position(run_dir)[1]) >= 0 and _released_everywhere(run_dir, 3, done + 1)):
        assert proc.poll() is None, "the run ended before a kill found the window"
        assert time.monotonic() < deadline, "the run made no progress in 300 s"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    released, checkpointed = _ledger_rounds(run_dir), _position(run_dir)[1]
    assert released == checkpointed + 1, (released, checkpointed)
    assert _start(_resume(run_dir)).wait(timeout=600) == 0
    for site in range(3):
        ours = json.loads((run_dir / "privacy" / f"site-{site}.json").read_text())["entries"]
        ref = json.loads((reference / "privacy" / f"site-{site}.json").read_text())["entries"]
        assert len(ours) == len(ref) == DP_ROUNDS  # the interrupted round is in once
        assert [e["epsilon"] for e in ours] == [e["epsilon"] for e in ref]
        assert [e["tag"] for e in ours] == [e["tag"] for e in ref]
    model = (run_dir / "model.safetensors").read_bytes()
    assert model == (reference / "model.safetensors").read_bytes()
    # A static run resumes to its last round: nothing lost, nothing twice (round 0 is the
    # fresh model), and its one version is the champion.
    assert pd.read_csv(run_dir / "metrics.csv")["round"].tolist() == list(range(DP_ROUNDS + 1))
    [version] = _registry(run_dir)
    assert (version["status"], version["rounds"]) == ("champion", DP_ROUNDS)
    summary = json.loads((run_dir / "summary.json").read_text())["privacy"]
    assert summary == json.loads((reference / "summary.json").read_text())["privacy"]


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    result = subprocess.run(
        [sys.executable, *_resume(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "not a resumable run folder (config.yaml missing)" in result.stderr
    assert "writes config.yaml and checkpoint/state.json" in result.stderr  # not "both"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written

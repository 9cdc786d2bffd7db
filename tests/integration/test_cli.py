"""The ``fedretrain`` command line, run as a subprocess: on a registry built with the library,
on a static run folder written by :class:`RunReport`, and (integration) on a real drift run."""

from __future__ import annotations

import io
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedretrain.registry import SCHEMA_VERSION, Registry, Status
from fedretrain.report import RoundRow, RunReport

PNG = b"\x89PNG\r\n\x1a\n"


def fedretrain(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedretrain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a command that must have failed with status 2."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedretrain: error: "), result.stderr
    return lines[0]


def weights(fill: float) -> dict[str, np.ndarray]:
    return {"fc.weight": np.full((2, 3), fill, np.float32), "fc.bias": np.full(2, fill, np.float32)}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """v1 (champion, initial, zeros) and v2 (candidate from v1, ones), with a gate event."""
    run = tmp_path / "run"
    with Registry(run, create=True) as reg:
        reg.register(
            weights(0.0),
            key="p0-initial",
            trigger="initial",
            reason="initial training",
            period=0,
            rounds=12,
            samples={1: 100, 2: 100},
            metrics={"accuracy": 0.8},
            site_metrics={1: {"accuracy": 0.85}, 2: {"accuracy": 0.75}},
            status=Status.champion,
        )
        reg.register(
            weights(1.0),
            key="p5-retrain",
            trigger="drift",
            reason="binomial error test fired",
            period=5,
            parent=1,
            rounds=3,
            samples={1: 100, 2: 90},
            metrics={"accuracy": 0.9},
            site_metrics={1: {"accuracy": 0.95}, 2: {"accuracy": 0.85}},
            epsilon={1: 1.5, 2: 2.25},
        )
        reg.record("gate", period=5, version=2, payload={"promote": True})
    return run


def events(run: Path, kind: str) -> list[dict[str, object]]:
    with Registry(run) as reg:
        return [e.payload for e in reg.events(kind=kind)]


# ---------------------------------------------------------------------- reading


def test_the_console_script_is_installed_and_runs() -> None:
    script = Path(sys.executable).with_name("fedretrain")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "fedretrain 0.1.0"


def test_list_shows_every_version_with_status_aliases_and_metrics(run_dir: Path) -> None:
    result = fedretrain("models", "list", run_dir)
    assert result.returncode == 0, result.stderr
    header, first, second = result.stdout.splitlines()
    assert header.split() == [
        "version", "status", "alias", "parent", "period", "trigger", "rounds", "sites", "metrics"
    ]  # fmt: skip
    assert first.split() == ["v1", "champion", "champion", "-", "0", "initial", "12", "2",
                             "accuracy=0.8000"]  # fmt: skip
    assert second.split() == ["v2", "candidate", "candidate", "v1", "5", "drift", "3", "2",
                              "accuracy=0.9000"]  # fmt: skip
    listed = json.loads(fedretrain("models", "list", run_dir, "--json").stdout)
    assert [(v["version"], v["status"], v["aliases"]) for v in listed] == [
        (1, "champion", ["champion"]),
        (2, "candidate", ["candidate"]),
    ]
    assert listed[1]["epsilon"] == {"1": 1.5, "2": 2.25}


def test_show_prints_lineage_and_checks_the_file(run_dir: Path) -> None:
    result = fedretrain("models", "show", run_dir, "candidate")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(None, 1) for line in result.stdout.split("\n\n")[0].splitlines())
    assert fields["key"] == "p5-retrain" and fields["parent"] == "v1"
    assert fields["reason"] == "binomial error test fired"
    assert fields["sites"] == "2 (1=100, 2=90)" and fields["samples"] == "190"
    assert fields["epsilon"] == "1=1.5000 2=2.2500"
    assert fields["file_check"] == "ok (sha256 verified)"
    assert "\nper-site metrics\n" in result.stdout and "\nevents\n" in result.stdout
    assert " gate " in result.stdout  # the gate event recorded against v2
    (run_dir / "models" / "v2.safetensors").write_bytes(b"garbage")
    broken = fedretrain("models", "show", run_dir, "v2", "--json")
    assert broken.returncode == 0
    assert json.loads(broken.stdout)["file_ok"] is False


def test_diff_prints_lineage_metric_and_per_tensor_l2_differences(run_dir: Path) -> None:
    result = fedretrain("models", "diff", run_dir, "1", "v2")
    assert result.returncode == 0, result.stderr
    sections = {s.splitlines()[0]: s.splitlines()[1:] for s in result.stdout.split("\n\n")}
    lineage = {line.split()[0]: line.split()[1:] for line in sections["lineage"][1:]}
    assert lineage["parent"] == ["-", "1"] and lineage["trigger"] == ["initial", "drift"]
    assert lineage["status"] == ["champion", "candidate"]
    assert "config_hash" not in lineage  # equal in both: not listed
    metrics = [line.split() for line in sections["metrics"][1:]]
    assert ["global", "accuracy", "0.8000", "0.9000", "0.1000"] in metrics
    assert ["2", "accuracy", "0.7500", "0.8500", "0.1000"] in metrics
    weights_rows = {line.split()[0]: line.split()[1] for line in sections[
        "weights: L2 distance per tensor"][1:]}  # fmt: skip
    assert weights_rows == {
        "fc.bias": f"{math.sqrt(2):.4f}",  # two weights, each 0 -> 1
        "fc.weight": f"{math.sqrt(6):.4f}",
        "(all)": f"{math.sqrt(8):.4f}",
    }


def test_events_are_listed_and_filtered(run_dir: Path) -> None:
    result = fedretrain("models", "events", run_dir, "--kind", "gate", "--json")
    assert result.returncode == 0, result.stderr
    (gate,) = json.loads(result.stdout)
    assert gate["kind"] == "gate" and gate["version"] == 2 and gate["payload"] == {"promote": True}
    text = fedretrain("models", "events", run_dir, "--version", "1").stdout.splitlines()
    assert [line.split()[2] for line in text[1:]] == ["register", "promote", "alias"]


def test_a_long_gate_payload_is_one_short_line_and_whole_in_json(run_dir: Path) -> None:
    rows = [{"site": s, "delta": 0.1, "counted": True, "regressed": False} for s in range(12)]
    reason = "candidate 0.9625 >= champion 0.7500 - global_margin 0 on 12 sites, " * 3
    with Registry(run_dir) as reg:
        reg.record("gate", period=6, version=2, payload={"reason": reason, "rows": rows})
    text = fedretrain("models", "events", run_dir, "--kind", "gate").stdout.splitlines()
    assert len(text) == 3 and all(len(line) < 200 for line in text), text  # was 1.5k characters
    assert "rows=[12 items]" in text[-1] and "reason=candidate 0.9625" in text[-1]
    whole = json.loads(fedretrain("models", "events", run_dir, "--kind", "gate", "--json").stdout)
    assert whole[-1]["payload"] == {"reason": reason, "rows": rows}


def test_show_lists_sites_in_number_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Registry(run, create=True) as reg:
        reg.register(
            weights(0.0), key="p0", trigger="initial", reason="initial", period=0,
            site_metrics={10: {"accuracy": 0.5}, 2: {"accuracy": 0.6}, 1: {"accuracy": 0.7}},
            status=Status.champion,
        )  # fmt: skip
    shown = fedretrain("models", "show", run, "1").stdout
    table = shown.split("\nper-site metrics\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "10"]


# ---------------------------------------------------------------------- decisions


def test_promote_is_recorded_as_manual_and_refuses_the_champion(run_dir: Path) -> None:
    result = fedretrain("models", "promote", run_dir, "2", "--reason", "validated offline")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "v2 is now the champion (was v1): validated offline"
    with Registry(run_dir) as reg:
        assert reg.aliases() == {"champion": 2}
        assert reg.get(1).status is Status.retired
    manual = [p for p in events(run_dir, "promote") if p["manual"]]
    assert manual == [
        {
            "from": 1,
            "to": 2,
            "reason": "validated offline",
            "manual": True,
            "previous_status": "candidate",
        }
    ]
    before = len(events(run_dir, "promote"))
    assert "v2 is already the champion" in failed(fedretrain("models", "promote", run_dir, "v2"))
    assert len(events(run_dir, "promote")) == before


def test_rollback_goes_to_the_parent_or_the_named_version(run_dir: Path) -> None:
    assert "v1 has no parent" in failed(fedretrain("models", "rollback", run_dir))
    assert fedretrain("models", "promote", run_dir, "2").returncode == 0
    result = fedretrain("models", "rollback", run_dir, "--reason", "site 2 complained")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "champion rolled back from v2 to v1: site 2 complained"
    assert events(run_dir, "rollback") == [
        {"from": 2, "to": 1, "reason": "site 2 complained", "manual": True}
    ]
    assert fedretrain("models", "rollback", run_dir, "--to", "v2").returncode == 0
    with Registry(run_dir) as reg:
        assert reg.champion().version == 2  # type: ignore[union-attr]
        assert reg.get(1).status is Status.rolled_back
        assert reg.check_invariants() == []


def test_export_copies_the_verified_file_and_never_overwrites(run_dir: Path) -> None:
    out = run_dir.parent / "served.safetensors"
    result = fedretrain("models", "export", run_dir, "champion", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (run_dir / "models" / "v1.safetensors").read_bytes()
    out.write_bytes(b"keep me")
    assert "exists; not overwriting it" in failed(fedretrain("models", "export", run_dir, 2, out))
    assert out.read_bytes() == b"keep me"


def test_check_reports_a_corrupt_file_with_exit_1(run_dir: Path) -> None:
    ok = fedretrain("models", "check", run_dir)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 2 versions, champion v1")
    path = run_dir / "models" / "v2.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    bad = fedretrain("models", "check", run_dir)
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"problem: model file {path} of v2 is corrupt")


def test_check_of_a_registry_that_cannot_open_says_what_the_folder_still_holds(
    run_dir: Path,
) -> None:
    # Issue 18, item 3: cut short with its write-ahead log lost; check reads, never writes.
    registry = run_dir / "registry.sqlite"
    for side in ("registry.sqlite-wal", "registry.sqlite-shm"):
        (run_dir / side).unlink(missing_ok=True)
    registry.write_bytes(registry.read_bytes()[:100])
    before = sorted(p.name for p in run_dir.iterdir()), registry.read_bytes()
    result = fedretrain("models", "check", run_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("problem: the registry cannot be opened, and was left as it is")
    assert any(ln.strip().startswith("registry versions: none readable") for ln in lines)
    assert any("v1.safetensors: key p0-initial, 2 arrays" in ln for ln in lines)
    assert any("v2.safetensors: key" in ln for ln in lines)
    assert lines[-1].startswith("way out: restore registry.sqlite")
    assert (sorted(p.name for p in run_dir.iterdir()), registry.read_bytes()) == before


# ---------------------------------------------------------------------- errors


def test_a_folder_without_a_registry_is_an_error_and_stays_empty(tmp_path: Path) -> None:
    line = failed(fedretrain("models", "list", tmp_path))
    assert line == (
        f"fedretrain: error: {tmp_path} is not a fedretrain run folder: it has no registry.sqlite"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_newer_schema_asks_for_an_upgrade_and_changes_nothing(run_dir: Path) -> None:
    raw = sqlite3.connect(run_dir / "registry.sqlite")
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    before = (run_dir / "registry.sqlite").read_bytes()
    line = failed(fedretrain("models", "promote", run_dir, "2"))
    assert f"schema version {SCHEMA_VERSION + 1}" in line and "upgrade fedretrain" in line
    assert (run_dir / "registry.sqlite").read_bytes() == before


def test_a_corrupt_model_file_is_named_with_its_hash_and_nothing_is_written(
    run_dir: Path,
) -> None:
    path = run_dir / "models" / "v2.safetensors"
    damaged = path.read_bytes()[:-4] + b"oops"
    path.write_bytes(damaged)
    with Registry(run_dir) as reg:
        expected = reg.get(2).sha256
    out = run_dir.parent / "out.safetensors"
    line = failed(fedretrain("models", "export", run_dir, "2", out))
    assert str(path) in line and f"expected {expected}" in line
    assert not out.exists() and path.read_bytes() == damaged
    line = failed(fedretrain("models", "promote", run_dir, "2"))
    assert "corrupt" in line
    with Registry(run_dir) as reg:
        assert reg.aliases()["champion"] == 1  # the promotion did not happen


def test_unknown_versions_are_errors(run_dir: Path) -> None:
    assert "no version 7" in failed(fedretrain("models", "show", run_dir, "v7"))
    assert "'latest' is not a version" in failed(fedretrain("models", "show", run_dir, "latest"))
    assert fedretrain("models", "promote", run_dir).returncode == 2  # argparse: missing VERSION


# ---------------------------------------------------------------------- report


def _static_run(folder: Path) -> dict[str, object]:
    """A three-round run folder as the server writes it; returns its summary."""
    report = RunReport(folder, 3, out=io.StringIO())
    for n, (acc, loss) in enumerate([(0.5, 0.7), (0.7, 0.5), (0.9, 0.3), (0.8, 0.35)]):
        row = RoundRow(n, math.nan if n == 0 else loss + 0.05, loss, acc, acc, acc, acc, 5, 5,
                       100, 0.1)  # fmt: skip
        report.add(row)
    return report.finish({"task": "synthetic"})


def test_report_rebuilds_a_static_run_from_metrics_csv(tmp_path: Path) -> None:
    original = _static_run(tmp_path)
    (tmp_path / "metrics.png").unlink()
    result = fedretrain("report", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fedretrain summary" in result.stdout
    assert result.stdout.strip().endswith(
        f"wrote metrics.png, summary.json, report.html in {tmp_path}"
    )
    assert (tmp_path / "metrics.png").read_bytes().startswith(PNG)
    rebuilt = json.loads((tmp_path / "summary.json").read_text())
    assert rebuilt == json.loads(json.dumps(original))  # the same numbers, task and wall time
    assert (rebuilt["best_round"], rebuilt["best_accuracy"], rebuilt["rounds"]) == (2, 0.9, 3)


def test_report_refuses_a_folder_without_csv_files(tmp_path: Path) -> None:
    assert "neither metrics.csv nor timeline.csv" in failed(fedretrain("report", tmp_path))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "metrics.csv").write_text("round,accuracy\n1,0.5\n")
    assert "has no column 'train_loss'" in failed(fedretrain("report", tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real three-period SINE run whose labels flip at period 2."""
    out = tmp_path_factory.mktemp("drift") / "run"
    simulate = Path(sys.executable).with_name("fedretrain-simulate")
    result = subprocess.run(
        [simulate, "scenario=sine_flip", "scenario.num_periods=3", "scenario.schedule.at=2",
         f"hydra.run.dir={out}"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.integration
def test_report_rebuilds_a_drift_run_exactly_and_a_stopped_one_from_what_it_has(
    drift_run: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(drift_run, tmp_path / "complete")
    original = json.loads((run / "summary.json").read_text())
    (run / "timeline.png").unlink()
    result = fedretrain("report", run)
    assert result.returncode == 0, result.stderr
    assert (run / "timeline.png").read_bytes().startswith(PNG)
    assert (run / "metrics.png").read_bytes().startswith(PNG)  # rounds of the whole run
    assert json.loads((run / "summary.json").read_text()) == original  # CSV gives it all back
    assert original["change_points"] == [2] and original["periods"] == 3

    stopped = shutil.copytree(drift_run, tmp_path / "stopped")
    timeline = pd.read_csv(stopped / "timeline.csv")
    timeline.iloc[:2].to_csv(stopped / "timeline.csv", index=False)  # killed in period 2
    for name in ("summary.json", "timeline.png"):
        (stopped / name).unlink()
    result = fedretrain("report", stopped)
    assert result.returncode == 0, result.stderr
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["periods"] == 2 and summary["change_points"] == []
    assert summary["mean_prequential_accuracy"] == pytest.approx(timeline["accuracy"].iloc[1])
    assert "wall_seconds" not in summary  # not in the CSV files, and not made up
    assert (stopped / "timeline.png").read_bytes().startswith(PNG)


# ---------------------------------------------------------------------- clusters


@pytest.fixture
def clustered_run(tmp_path: Path) -> Path:
    """An adaptation=clustered registry as the controller writes one: v1 cluster 0 serving
    sites 0-3, v2 cluster 1 (from v1) serving sites 4-5, v3 a rejected refine of cluster 1."""
    run = tmp_path / "clustered"
    with Registry(run, create=True) as reg:
        reg.register(weights(0.0), key="p0", trigger="initial", reason="initial training",
                     period=0, status=Status.champion, cluster=0)  # fmt: skip
        reg.set_cluster_champion(0, 1, reason="initial", period=0)
        reg.register(weights(1.0), key="p2-new-4", trigger="cluster 1: new concept",
                     reason="new concept", period=2, parent=1, rounds=5, cluster=1)  # fmt: skip
        reg.set_cluster_champion(1, 2, reason="founded", period=2)
        reg.register(weights(2.0), key="p3-c1", trigger="cluster 1: refresh",
                     reason="refresh", period=3, parent=2, rounds=2, cluster=1)  # fmt: skip
        reg.reject(3, reason="gate: worse on its sites", period=3)
        served = {"assignment": {str(s): 0 if s < 4 else 1 for s in range(6)}}
        for period in (2, 3):
            reg.record("clusters", period=period, payload={**served, "versions": {"0": 1, "1": 2}})
    return run


def test_models_list_cluster_shows_each_lineage_and_its_champion(clustered_run: Path) -> None:
    listed = fedretrain("models", "list", clustered_run, "--cluster")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["version", "cluster", "status"]
    cells = {row.split()[0]: row.split() for row in rows if row.startswith("v")}
    assert cells["v1"][1:4] == ["0", "champion", "champion,cluster-0"]
    assert cells["v2"][1:4] == ["1", "candidate", "cluster-1"]
    assert cells["v3"][1:3] == ["1", "rejected"]
    only = fedretrain("models", "list", clustered_run, "--cluster", "1", "--json")
    assert only.returncode == 0, only.stderr
    lineage = json.loads(only.stdout)
    assert [(r["version"], r["cluster"], r["parent"]) for r in lineage] == [(2, 1, 1), (3, 1, 2)]
    assert lineage[0]["serves"] == [4, 5] and lineage[0]["aliases"] == ["cluster-1"]
    missing = fedretrain("models", "list", clustered_run, "--cluster", "4")
    assert missing.returncode == 1
    assert "no version was trained for cluster 4 (its clusters: 0, 1)" in missing.stderr
    assert fedretrain("models", "list", clustered_run, "--cluster", "x").returncode == 2
    shown = fedretrain("models", "show", clustered_run, "cluster-1", "--json")
    assert json.loads(shown.stdout)["version"] == 2
    assert "no version is cluster 7's champion" in failed(
        fedretrain("models", "show", clustered_run, "cluster-7")
    )


def test_a_schema_1_run_folder_is_migrated_when_first_opened(tmp_path: Path) -> None:
    run = tmp_path / "old"
    shutil.copytree(Path(__file__).parents[1] / "unit/registry/data/registry_v1", run)
    checked = fedretrain("models", "check", run)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "ok: 4 versions, champion v3, every model file verified"
    events = json.loads(fedretrain("models", "events", run, "--kind", "migrate", "--json").stdout)
    steps = [{"from": v, "to": v + 1} for v in range(1, SCHEMA_VERSION)]  # one schema a step
    assert [e["payload"] for e in events] == steps
    listed = json.loads(fedretrain("models", "list", run, "--json").stdout)
    assert [(r["version"], r["status"], r["cluster"]) for r in listed] == [
        (1, "retired", None),
        (2, "rejected", None),
        (3, "champion", None),
        (4, "candidate", None),
    ]

"""``fedretrain compare`` is ``fedretrain-compare``: same help, same errors, arguments unchanged."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from fedretrain import cli, compare


def exit_of(
    command: Callable[[Sequence[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[object, str, str]:
    """The exit code, stdout and stderr of a command that must exit through argparse."""
    with pytest.raises(SystemExit) as exited:
        command(argv)
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_help_is_compares_own(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exit_of(cli.main, ["compare", "--help"], capsys)
    assert code == 0 and err == ""
    assert "--policies" in out and "--out" in out and "Hydra overrides" in out
    assert out.startswith("usage: fedretrain compare ")  # not the parent command's name
    assert (code, out.replace("fedretrain compare", "fedretrain-compare"), err) == exit_of(
        compare.main, ["--help"], capsys
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--policies", "bogus", "scenario=sine_flip"],  # an unknown policy
        ["--policies", "periodic"],  # no scenario
        [],
    ],
)
def test_bad_arguments_exit_as_fedretrain_compare_does(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exit_of(cli.main, ["compare", *argv], capsys)
    assert code == 2 and out == "" and "fedretrain compare: error: " in err
    expected = exit_of(compare.main, argv, capsys)
    assert (code, out, err.replace("fedretrain compare", "fedretrain-compare")) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["scenario=sine_flip", "--policies", "periodic,triggered", "--out", "runs/sea"],
        ["--policies", "periodic", "scenario=sea_thresholds", "runtime.seed=3"],
        ["-h", "--", "scenario=x"],
    ],
)
def test_arguments_reach_compare_unchanged(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(compare, "main", lambda args, prog: seen.append([prog, *args]))
    assert cli.main(["compare", *argv]) == 0
    assert seen == [["fedretrain compare", *argv]]


def test_compare_is_listed_in_the_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_of(cli.main, ["--help"], capsys)
    assert code == 0 and "compare" in out


# ------------------------------------------------------------------ running the children

FAKE_CHILD = """
import json, os, sys, time
from pathlib import Path
policy, seed, run_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
print(f"period 0 of {policy}", flush=True)
if policy == "never" and seed == 1:
    sys.exit("boom: this run fails")
accuracy = {"never": 0.5, "periodic": 0.7}[policy] + seed / 100
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "summary.json").write_text(json.dumps(
    {"mean_prequential_accuracy": accuracy, "retrains": seed, "detection_delays": [seed],
     "parent": os.environ.get("FEDRETRAIN_MLFLOW_PARENT_RUN"),
     **({"privacy": {"max_epsilon": 1.0 + seed}} if policy == "periodic" else {})}))
print("done", flush=True)
"""


@pytest.fixture
def fake_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children that print as a simulation does and write a summary, in a blink (real
    processes, not Ray)."""

    def command(job: compare.Job, overrides: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", FAKE_CHILD, job.policy, str(job.seed), str(job.run_dir)]

    monkeypatch.setattr(compare, "command", command)


def test_seeds_give_each_policy_its_mean_and_spread_and_a_failure_is_reported(
    fake_children: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scenario=sine_flip", "--policies", "never,periodic", "--seeds", "0,1,2"]
    with pytest.raises(SystemExit) as exited:
        compare.main([*argv, "--jobs", "2", "--out", str(tmp_path)])
    assert exited.value.code == 1  # one run failed; the others are tabled
    out, err = capsys.readouterr()
    assert "[periodic seed=2] period 0 of periodic" in out  # each line, labelled by its run
    assert "never seed=1 failed (exit 1)" in err and "boom: this run fails" in err
    record = json.loads((tmp_path / "comparison.json").read_text())
    never, periodic = record["rows"]
    assert periodic["mean_prequential_accuracy"] == pytest.approx(np.mean([0.7, 0.71, 0.72]))
    assert periodic["mean_prequential_accuracy_sd"] == pytest.approx(
        np.std([0.7, 0.71, 0.72], ddof=1)
    )
    assert never["mean_prequential_accuracy"] == pytest.approx(np.mean([0.5, 0.52]))
    assert never["failed"] == "1 of 3 runs" and never["seeds"] == [0, 2]
    assert "0.7100 ± 0.0100" in record["table"]
    # A DP-SGD run's largest ε, read from its summary's privacy block: seeds 0-2 spent 1-3.
    assert periodic["max_epsilon"] == pytest.approx(2.0) and "max_epsilon" not in never
    assert "max ε" in record["table"] and "2.00 ± 1.00" in record["table"]
    assert (tmp_path / "periodic" / "seed-2" / "compare.log").read_text().endswith("done\n")
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert record["complete"] is True  # every run ended, one of them failing


@pytest.mark.parametrize(
    ("override", "problem"),
    [("train.lrr=0.1", "train.lrr: no such key"), ("runtime.num_clients=-3", "num_clients=-3")],
)
def test_a_bad_config_stops_compare_before_any_run(
    override: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scenario=sine_flip", override, "--out", str(tmp_path / "cmp")]
    code, out, err = exit_of(compare.main, argv, capsys)
    assert code == 2 and "invalid configuration: " in err and problem in err, err
    assert not (tmp_path / "cmp").exists()  # nothing started, nothing written


def test_with_mlflow_the_runs_nest_under_one_comparison_run(
    fake_children: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow = pytest.importorskip("mlflow.tracking")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["scenario=sine_flip", "--policies", "periodic", "--seeds", "0,2"]
    compare.main([*argv, "tracking=mlflow", f"tracking.uri={uri}", "--out", str(tmp_path / "c")])
    client = mlflow.MlflowClient(uri)
    [parent] = client.search_runs([client.get_experiment_by_name("fedretrain").experiment_id])
    assert (
        parent.info.status == "FINISHED" and parent.data.tags["fedretrain.scenario"] == "sine_flip"
    )
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "comparison.json",
        "comparison.png",
    }
    record = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert [r["parent"] for r in record["runs"]] == [parent.info.run_id] * 2  # told to nest


def test_clustered_arms_run_their_adaptation_and_are_checked_as_they_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = compare.parse(
        ["scenario=sine_staggered", "--policies", "triggered,clustered,concept_oracle"]
    )
    commands = {
        p: compare.command(compare.Job(p, None, tmp_path / p), plan.overrides)
        for p in plan.policies
    }
    assert "policy=triggered" in commands["triggered"]
    assert "adaptation=clustered" in commands["clustered"]
    assert "adaptation=oracle" in commands["concept_oracle"]
    assert not any(a.startswith("policy=") for a in commands["clustered"])
    # A config only the clustered arm refuses is named with that arm, before any run.
    argv = [
        "scenario=sine_staggered", "privacy=dpsgd", "privacy.user_level=true",
        "--policies", "triggered,clustered",
    ]  # fmt: skip
    code, _, err = exit_of(compare.main, [*argv, "--out", str(tmp_path / "cmp")], capsys)
    assert code == 2 and "(in clustered)" in err and "privacy.user_level=false" in err
    assert not (tmp_path / "cmp").exists()


def test_the_table_shows_what_retraining_cost_and_epsilon_only_under_dp() -> None:
    base = {"mean_prequential_accuracy": 0.9, "retrain_rounds": 10, "retrains": 2,
            "detection_delays": [1], "missed_changes": 0, "false_alarms": 0,
            "wall_seconds": 3.0, "retrain_site_rounds": 40, "retrain_megabytes": 1.234}  # fmt: skip
    rows = compare.aggregate([{**base, "policy": "never", "seed": 0}], ["never"])
    table = compare.format_table(rows)
    header = [h.strip() for h in table.splitlines()[0].split("|")]
    assert {"retrain site-rounds", "retrain MB"} <= set(header) and "max ε" not in header
    assert "1.23" in table.splitlines()[2]
    private = [
        {**base, "policy": "never", "seed": s, "max_epsilon": e} for s, e in ((0, 2.0), (1, 4.0))
    ]
    table = compare.format_table(compare.aggregate(private, ["never"]))
    header = [h.strip() for h in table.splitlines()[0].split("|")]
    assert header[-2:] == ["max ε", "wall s"]
    assert "3.00 ± 1.41" in table  # the mean and sd of 2.0 and 4.0

"""The release lifecycle on Flower's simulation engine: the gate rejects a poisoned candidate,
a canary serves a candidate at a few sites before promoting it, and the CLI steers the
registry of a real run folder."""

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pandas as pd
import pytest

from fedretrain.registry import Registry, Status

pytestmark = pytest.mark.integration

Simulate = Callable[..., Path]  # the `simulate` fixture of conftest.py
Cli = Callable[..., CompletedProcess[str]]  # the `cli` fixture of conftest.py


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory: pytest.TempPathFactory, simulate: Simulate) -> Path:
    """No drift (digits, "switching" to the concept it already has); every period retrains;
    from period 1 half the sites train on flipped labels, with the norm check off so that their
    updates reach the candidate. Digits, not SEA: on a binary task the flipped half cancels the
    honest half and federated validation keeps an unharmed round, so nothing is poisoned."""
    return simulate(
        tmp_path_factory.mktemp("poison"),
        "scenario=digits_swap",
        "scenario.num_periods=3",
        "scenario.schedule.at=2",
        "scenario.schedule.concepts=[0,0]",
        "policy=periodic",
        "attack=label_flip",
        "attack.fraction=0.5",
        "attack.from_period=1",
        "validation.max_norm_ratio=null",
        "runtime.num_clients=4",
        "retrain.max_rounds=8",
    )


def test_the_gate_rejects_a_candidate_trained_with_flipped_labels_at_half_the_sites(
    poisoned_run: Path,
) -> None:
    with Registry(poisoned_run) as registry:
        assert registry.check_invariants() == []
        assert registry.champion().version == 1  # type: ignore[union-attr]
        poisoned = [v for v in registry.versions() if v.period >= 1]
        assert poisoned and all(v.status is Status.rejected for v in poisoned)
        gates = registry.events(kind="gate")
    assert [e.version for e in gates] == [v.version for v in poisoned]
    for event in gates:
        decision = event.payload
        assert decision["promote"] is False
        assert decision["candidate_accuracy"] < decision["champion_accuracy"] - 0.05
        assert len(decision["rows"]) == 4 and any(r["regressed"] for r in decision["rows"])
    timeline = pd.read_csv(poisoned_run / "timeline.csv")
    assert (timeline["serving_version"] == 1).all()  # the poisoned models never served
    assert timeline.loc[timeline["period"] >= 1, "action"].str.endswith("rejected").all()


def test_the_cli_steers_the_registry_of_a_real_run(
    poisoned_run: Path, tmp_path: Path, cli: Cli
) -> None:
    listed = cli("models", "list", poisoned_run, "--json")
    assert listed.returncode == 0, listed.stderr
    statuses = {v["version"]: v["status"] for v in json.loads(listed.stdout)}
    assert statuses[1] == "champion" and statuses[2] == "rejected"

    refused = cli("models", "rollback", poisoned_run)  # v1 has no parent
    assert refused.returncode == 2 and "no parent" in refused.stderr

    assert cli("models", "promote", poisoned_run, "v2", "--reason", "test").returncode == 0
    back = cli("models", "rollback", poisoned_run, "--reason", "test")
    assert back.returncode == 0, back.stderr
    with Registry(poisoned_run) as registry:
        assert registry.champion().version == 1  # type: ignore[union-attr]
        kinds = [e.kind for e in registry.events()]
        manual = [
            e.payload["manual"] for e in registry.events() if e.kind in ("promote", "rollback")
        ]
    assert kinds[-2:] == ["promote", "rollback"] or "rollback" in kinds
    assert manual[-2:] == [True, True]

    out = tmp_path / "champion.safetensors"
    assert cli("models", "export", poisoned_run, "champion", out).returncode == 0
    assert out.stat().st_size > 0
    assert cli("models", "export", poisoned_run, "champion", out).returncode == 2  # no overwrite

    (poisoned_run / "timeline.png").unlink()
    report = cli("report", poisoned_run)
    assert report.returncode == 0, report.stderr
    assert (poisoned_run / "timeline.png").stat().st_size > 0


def test_a_canary_serves_the_candidate_at_some_sites_then_promotes_it(
    tmp_path: Path, simulate: Simulate
) -> None:
    out = simulate(
        tmp_path / "canary",
        "scenario=sine_flip",
        "scenario.num_periods=8",
        "release=canary",
        "release.canary_fraction=0.3",
        "release.canary_periods=2",
    )
    with Registry(out) as registry:
        assert registry.check_invariants() == []
        canary = registry.events(kind="canary")
        assert len(canary) == 1 and canary[0].period == 7 and canary[0].version == 2
        assert canary[0].payload["action"] == "promote"
        promotions = [e for e in registry.events(kind="promote") if e.version == 2]
        assert [e.period for e in promotions] == [7]
        assert registry.champion().version == 2  # type: ignore[union-attr]
    timeline = pd.read_csv(out / "timeline.csv").set_index("period")
    # Labels flipped at 5; in 6 and 7 three of ten sites serve the retrained candidate, the
    # others the old champion: the federation scores in between.
    during = timeline.loc[[6, 7], "accuracy"]
    assert (during > 0.15).all() and (during < 0.6).all()
    # The champion is still v1 while the canary runs; the verdict at its end promotes v2.
    assert timeline.loc[[5, 6, 7], "serving_version"].tolist() == [1, 1, 2]

"""A real drift simulation tracked with ``tracking=mlflow`` (issue 16, item 1): the run shows in
a local MLflow store (SQLite) with its params, per-round and per-period metrics, artifacts and
every registry version, aliased as the registry's champion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from fedretrain.registry import Registry  # noqa: E402

pytestmark = pytest.mark.integration

Simulate = Callable[..., Path]


def test_a_tracked_drift_run_shows_in_mlflow(tmp_path: Path, simulate: Simulate) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = simulate(
        tmp_path / "run",
        "scenario=sine_flip",
        "scenario.num_periods=3",
        "scenario.schedule.at=[2]",
        "policy=periodic",
        "retrain.max_rounds=3",
        "runtime.num_clients=2",
        "tracking=mlflow",
        f"tracking.uri={uri}",
    )
    client = MlflowClient(uri)
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["scenario.name"] == "sine_flip"
    rounds = pd.read_csv(out / "metrics.csv")
    history = client.get_metric_history(run_id, "round/accuracy")
    assert [m.step for m in history] == rounds["round"].tolist()
    assert [m.value for m in history] == pytest.approx(rounds["accuracy"].tolist())
    assert [m.step for m in client.get_metric_history(run_id, "period/accuracy")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "timeline.csv", "decisions.jsonl", "timeline.png"} <= artifacts
    with Registry(out) as registry:
        ours = registry.versions()
        champion = registry.champion()
    assert champion is not None and len(ours) >= 2
    theirs = client.search_model_versions("name='fedretrain-sine_mlp'")
    assert sorted(int(v.tags["fedretrain.version"]) for v in theirs) == [v.version for v in ours]
    aliased = client.get_model_version_by_alias("fedretrain-sine_mlp", "champion")
    assert aliased.tags["fedretrain.version"] == str(champion.version)
    assert aliased.tags["fedretrain.sha256"] == champion.sha256

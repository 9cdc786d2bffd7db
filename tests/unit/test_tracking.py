"""MLflow tracking (issue 16, item 1) against a real MLflow store (SQLite) and a real registry:
metrics by step, the registry mirrored with aliases, a resumed run continuing its MLflow run,
and a tracking failure that costs one warning and nothing else."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from fedretrain.config import compose, to_yaml  # noqa: E402
from fedretrain.preflight import to_typed  # noqa: E402
from fedretrain.registry import Registry, Status  # noqa: E402
from fedretrain.report import RoundRow  # noqa: E402
from fedretrain.timeline import PeriodRow  # noqa: E402
from fedretrain.tracking import PARENT_ENV, MlflowTracker, build_tracker  # noqa: E402


def _tracker(run_dir: Path, uri: str) -> MlflowTracker:
    node = compose(["tracking=mlflow", f"tracking.uri={uri}", "scenario=sine_flip"])
    tracker = build_tracker(to_typed(node, build_targets=False), run_dir, to_yaml(node))
    assert isinstance(tracker, MlflowTracker)
    return tracker


def _round(n: int, accuracy: float) -> RoundRow:
    return RoundRow(n, 0.5, 0.4, accuracy, 0.8, 0.8, 0.8, 2, 2, 40, 0.1)


def _period(p: int, accuracy: float, serving: int) -> PeriodRow:
    return PeriodRow(
        p, accuracy, 0.3, 0.9, 200, 2, 0, p == 2, "", "", True, "r", "warm", 3, serving,
        math.nan, 1.0,
    )  # fmt: skip


def _weights(fill: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, fill, np.float32)}


def test_a_run_is_one_mlflow_run_with_its_registry_mirrored(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    registry = Registry(run_dir, create=True)
    tracker = _tracker(run_dir, uri)
    registry.register(
        _weights(0), key="p0", trigger="initial", reason="initial", period=0,
        status=Status.champion,
    )  # fmt: skip
    for n, accuracy in enumerate((0.1, 0.6, 0.9)):
        tracker.round(_round(n, accuracy), {0: float(n)})
    tracker.period(_period(0, 0.9, 1), registry)
    v2 = registry.register(
        _weights(1), key="p1", trigger="warm", reason="drift", period=1, parent=1
    )
    tracker.period(_period(1, 0.5, 1), registry)
    client = MlflowClient(uri)
    name = "fedretrain-sine_mlp"
    assert client.get_model_version_by_alias(name, "champion").version == 1
    assert client.get_model_version_by_alias(name, "challenger").version == 2
    registry.promote(v2.version, reason="passed the gate", period=2)
    (run_dir / "summary.json").write_text("{}")
    tracker.finish({"mean_prequential_accuracy": 0.7, "scenario": "sine_flip"}, registry)
    assert client.get_model_version_by_alias(name, "champion").version == 2
    with pytest.raises(Exception, match="challenger"):  # no candidate any more
        client.get_model_version_by_alias(name, "challenger")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(to_typed(compose([])).train.lr)
    history = client.get_metric_history(tracker.run_id, "round/accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.6), (2, 0.9)]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "period/accuracy")] == [0, 1]
    epsilon = client.get_metric_history(tracker.run_id, "epsilon/site_0")
    assert [(m.step, m.value) for m in epsilon] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert run.data.metrics["summary/mean_prequential_accuracy"] == 0.7
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"summary.json", "models"} <= artifacts
    old = client.get_model_version(name, "1")
    assert (
        old.tags["fedretrain.status"] == "retired" and old.tags["fedretrain.trigger"] == "initial"
    )
    assert client.get_model_version(name, "2").tags["fedretrain.parent"] == "1"
    registry.close()


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    with Registry(run_dir, create=True) as registry:
        first = _tracker(run_dir, uri)
        registry.register(
            _weights(0), key="p0", trigger="initial", reason="initial", period=0,
            status=Status.champion,
        )  # fmt: skip
        first.period(_period(0, 0.9, 1), registry)
        resumed = _tracker(run_dir, uri)  # the process was killed; resume builds it again
        resumed.period(_period(1, 0.8, 1), registry)
    client = MlflowClient(uri)
    assert resumed.run_id == first.run_id
    assert len(client.search_runs([client.get_experiment_by_name("fedretrain").experiment_id])) == 1
    assert len(client.search_model_versions("name='fedretrain-sine_mlp'")) == 1  # not twice
    history = client.get_metric_history(first.run_id, "period/accuracy")
    assert [m.step for m in history] == [0, 1]


def test_a_tracking_server_that_does_not_answer_costs_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING, "fedretrain.tracking"):
        tracker = _tracker(tmp_path / "run", "http://127.0.0.1:9")  # nothing listens there
        with Registry(tmp_path / "run", create=True) as registry:
            for n in range(3):
                tracker.round(_round(n, 0.5), {})
            tracker.period(_period(0, 0.9, 1), registry)
            tracker.finish({}, registry)
    warnings = [r for r in caplog.records if r.name == "fedretrain.tracking"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "http://127.0.0.1:9 failed" in message and "the run goes on" in message


def test_a_run_of_a_comparison_nests_under_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PARENT_ENV, "parent-run-id")
    tracker = _tracker(tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert run.data.tags["mlflow.parentRunId"] == "parent-run-id"

"""A stock Flower ClientApp beside fedretrain's in a real simulation (issue 18, item 2): its
replies are rejected with a reason naming what is missing, it is left out of drift detection,
and the federation goes on with the others. Before, a single stock site made the validation
take its metric keys as the round's reference and reject every fedretrain site, so every round
was skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RUN = """
import sys
from pathlib import Path
from fedretrain.config import compose, to_yaml
from fedretrain.flower.simulation import simulate
from fedretrain.preflight import to_typed
from server.app import build_server_app
from stock_clientapp import app
run_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
cfg = compose(overrides)
run_dir.mkdir(parents=True)
simulate(build_server_app(to_yaml(cfg), run_dir), app, to_typed(cfg).runtime)
"""


def _simulate(run_dir: Path, *overrides: str) -> tuple[pd.DataFrame, str]:
    """Run 3 sites, site 1 on the stock app; the rejections and the printed output."""
    env = {
        **os.environ,
        "STOCK_SITES": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(run_dir), "runtime.num_clients=3", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return pd.read_csv(run_dir / "rejections.csv"), result.stdout


def _stock_node(rejections: pd.DataFrame) -> int:
    [node] = rejections["node_id"].unique()  # only the stock site is ever rejected
    return int(node)


def test_a_static_run_trains_on_with_a_stock_site(tmp_path: Path) -> None:
    rejections, out = _simulate(tmp_path / "run", "runtime.num_rounds=2")
    _stock_node(rejections)
    assert not rejections["reason"].str.contains("round skipped").any()
    train = rejections[rejections["phase"] == "train"]
    assert train["reason"].str.startswith("the reply lacks train-loss").all() and len(train) == 2
    assert rejections[rejections["phase"] == "evaluate"]["reason"].str.contains("clients.app").all()
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["train_clients"].iloc[1:].tolist() == [2, 2]  # ours trained every round
    assert metrics["accuracy"].iloc[-1] > 0.5


def test_a_drift_run_leaves_a_stock_site_out_of_detection(tmp_path: Path) -> None:
    rejections, _ = _simulate(
        tmp_path / "run",
        "scenario=sine_flip",
        "scenario.num_periods=3",
        "scenario.schedule.at=[2]",
        "retrain.max_rounds=3",
    )
    _stock_node(rejections)
    monitor = rejections[rejections["phase"].str.startswith("monitor")]
    assert sorted(monitor["phase"]) == ["monitor p0", "monitor p1", "monitor p2"]
    assert monitor["reason"].str.contains("has no monitor handler").all()
    timeline = pd.read_csv(tmp_path / "run" / "timeline.csv")
    assert timeline["sites"].tolist() == [2, 2, 2]  # ours were monitored every period
    assert timeline["rejected"].tolist() == [1, 1, 1]

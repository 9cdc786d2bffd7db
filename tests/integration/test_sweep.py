"""A ``fedretrain-simulate -m`` sweep (issue 16, items 3 and 4): its jobs share one Ray cluster
that ends with the sweep, a job with a bad value fails alone, ``sweep.csv`` and the printed
table hold each job's numbers as its summary.json has them, and with ``tracking=mlflow`` the
jobs' MLflow runs nest under the sweep's."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def test_a_sweep_shares_one_ray_cluster_and_tables_its_jobs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable, "-m", "fedretrain", "-m", "task=sea_mlp", "runtime.num_rounds=1",
            "runtime.num_clients=2,3,-3", "tracking=mlflow", f"tracking.uri={uri}",
            f"hydra.sweep.dir={out}",
        ],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-3000:]  # Hydra reports the failed job at the end
    table = pd.read_csv(out / "sweep.csv").set_index("job")
    assert table.loc[[0, 1], "status"].tolist() == ["done", "done"]
    assert table.loc[2, "status"].startswith("failed: ConfigError")
    assert "runtime.num_clients" in table.loc[2, "status"]
    for job in (0, 1):
        summary = json.loads((out / str(job) / "summary.json").read_text())
        assert table.loc[job, "final_accuracy"] == pytest.approx(summary["final_accuracy"])
        assert summary["clients"] == (2, 3)[job]
    assert "fedretrain sweep: 2 of 3 jobs done, 1 failed" in result.stdout
    assert "every job: task=sea_mlp runtime.num_rounds=1" in result.stdout
    assert re.search(r"^1\s+\|\s+runtime\.num_clients=3\s+\|", result.stdout, re.MULTILINE)

    # Both simulations joined the sweep's one cluster, which is gone with the sweep.
    joined = {
        re.search(r"joined the Ray cluster at 127\.0\.0\.1:(\d+)", log).group(1)  # type: ignore[union-attr]
        for log in ((out / str(job) / "simulate.log").read_text() for job in (0, 1))
    }
    assert len(joined) == 1
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(joined.pop()))) != 0, "the sweep's Ray outlived it"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fedretrain").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.info.run_name == f"sweep {out.name}"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"sweep.csv"}
    assert parent.info.status == "KILLED"  # a job failed: the sweep did not end as asked


def test_a_killed_sweep_leaves_no_ray_behind(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [
            sys.executable, "-m", "fedretrain", "-m", "task=sea_mlp", "runtime.num_clients=2",
            "runtime.num_rounds=500", "train.lr=0.01,0.1", f"hydra.sweep.dir={out}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    log = out / "0" / "simulate.log"
    deadline = time.monotonic() + 600  # generous: a busy machine starts Ray slowly
    port = None
    while port is None:
        assert sweep.poll() is None and time.monotonic() < deadline, "the first job never joined"
        found = re.search(r"joined the Ray cluster at 127\.0\.0\.1:(\d+)", _text(log))
        port = int(found.group(1)) if found else None
        time.sleep(0.5)
    sweep.kill()  # kill -9: no callback, no atexit
    sweep.wait()
    deadline = time.monotonic() + 120
    while _answers(port):
        assert time.monotonic() < deadline, "the killed sweep's Ray head is still running"
        time.sleep(1)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

"""adaptation=clustered in a deployment (issue 14, items 4 and 6), in real processes on
loopback: ``fedretrain server`` and three ``fedretrain agent`` processes serving folders of
SEA CSV files, one monitoring period every 12 s of wall-clock time.

- period 0: every site has SEA data (θ = 8); the first model is cluster 0, served by all;
- period 1: sites 0 and 1 get files whose labels are flipped: they drift and get a new
  cluster, trained by them alone on this period's files;
- period 2: site 2's labels flip too: it moves to the flipped cluster (a recurring concept,
  no new model), which is then fine-tuned on its three sites: sites 0 and 1 read their
  period-1 files again (their buffers start when they joined), site 2 its period-2 file.

The serving assignment travels in the messages: each site's statistics are scored with its
cluster's model, so the flipped sites stay accurate while the others do too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_deploy_e2e import _sea_csv, _taken, _wait, launched  # noqa: F401
from test_deploy_faults import SITES, Cli, Drill

from fedretrain.deploy.launch import Launched
from fedretrain.registry import Registry

BIN = Path(sys.executable).parent
ROWS = 300  # per file: 240 train, 60 holdout (data.holdout_fraction 0.2)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.deploy,
    pytest.mark.skipif(not Path("/proc").exists(), reason="process trees are read from /proc"),
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="flower-superlink not beside python"
    ),
]


def test_sites_that_drift_apart_are_served_their_own_cluster_in_deployment(
    tmp_path: Path,
    launched: list[Launched],  # noqa: F811
    cli: Cli,
) -> None:
    drill = Drill(
        tmp_path,
        cli,
        launched,
        **{
            "scenario.num_periods": "3",
            "adaptation": "clustered",
            "adaptation.min_drop": "0.15",  # wide margins: 60 holdout rows per site
            "retrain.max_rounds": "1",  # a round here is ~25 s (a ClientApp process a message)
        },
    )
    for i, folder in enumerate(drill.folders):  # period 0, larger than the drill's own
        _sea_csv(folder / "p0.csv", ROWS, seed=i)
    server = drill.server()
    _wait("sites registered", lambda: "site site-2:" in server.tail(), 90, server)
    agents = [drill.agent(i) for i in range(SITES)]
    folders = drill.folders

    def period(p: int, flipped: set[int]) -> None:
        _wait(f"period {p - 1} taken", lambda: all(p - 1 in _taken(f) for f in folders), 150,
              server, *agents)  # fmt: skip
        for i, folder in enumerate(folders):
            _sea_csv(folder / f"p{p}.csv", ROWS, seed=10 * p + i, flipped=i in flipped)

    period(1, {0, 1})
    period(2, {0, 1, 2})
    _wait("run finished", lambda: not server.alive(), 240, server, *agents)
    assert server.proc.returncode == 0, server.tail(6000)

    clusters = pd.read_csv(drill.run_dir / "clusters.csv")
    by_period = {
        p: dict(zip(rows["site"], rows["cluster"], strict=True))
        for p, rows in clusters.groupby("period")
    }
    assert by_period[0] == {0: 0, 1: 0, 2: 0}
    assert by_period[1] == {0: 1, 1: 1, 2: 0}  # sites 0-1 split off
    assert by_period[2] == {0: 1, 1: 1, 2: 1}  # site 2 followed them, no new model
    timeline = pd.read_csv(drill.timeline).set_index("period")
    assert "recurring concept at sites 2" in timeline.loc[2, "reason"]
    # Period 1: two of three sites flipped under the one model. Period 2: sites 0-1 were
    # served (and scored with) cluster 1's model, only site 2's new flip went unserved.
    assert timeline.loc[1, "accuracy"] < 0.5 < timeline.loc[2, "accuracy"], timeline["accuracy"]
    with Registry(drill.run_dir) as registry:
        assert registry.check_invariants() == []
        versions = {v.trigger: v for v in registry.versions()}
    new, refine = versions["cluster 1: new concept"], versions["cluster 1: refine"]
    train_rows = ROWS - round(0.2 * ROWS)
    assert new.samples == {"0": train_rows, "1": train_rows}  # its sites alone
    # Sites 0-1 trained on their files of periods 1 and 2, site 2 on its file of period 2.
    assert refine.samples == {"0": 2 * train_rows, "1": 2 * train_rows, "2": train_rows}
    summary = json.loads((drill.run_dir / "summary.json").read_text())
    assert summary["clusters_serving"] == 1 and summary["adaptation"] == "clustered"

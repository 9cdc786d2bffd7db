"""Property test (issue 14): random drift schedules under every policy and adaptation mode run
to their end through the numpy fake federation, and the registry's invariants hold after each.

Twenty schedules from :func:`fedretrain.drift.schedule.random_change_points` (6 sites, 10
periods, 3 concepts, a change with probability 0.25 per site and period), each concept id used
as the site's θ; each under the four single-model policies (never, periodic, triggered by the
binomial error test, oracle change points) and under adaptation=clustered and oracle.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import MakeController

from fedretrain.drift.schedule import random_change_points
from fedretrain.monitor.binomial_error import BinomialErrorTest
from fedretrain.monitor.trigger import TriggerConfig
from fedretrain.registry import Registry

SITES, PERIODS = 6, 10
POLICIES = {
    "never": TriggerConfig(name="never", on_drift=False),
    "periodic": TriggerConfig(name="periodic", on_drift=False, every=1),
    "triggered": TriggerConfig(name="triggered", on_drift=True),
    "oracle": TriggerConfig(name="oracle", on_drift=False, on_change_points=True),
}
ARMS = [("single", p) for p in POLICIES] + [("clustered", "triggered"), ("oracle", "triggered")]


@pytest.fixture(autouse=True)
def fast_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is checked here is what the runs decide and record, not that their files survive
    a power loss: no fsync (two thirds of the test's time), no cluster plot."""
    monkeypatch.setattr("fedretrain.atomic.os.fsync", lambda fd: None)
    monkeypatch.setattr("fedretrain.retraining.clustered.plot_clusters", lambda *args: None)


@pytest.mark.parametrize("seed", range(20))
def test_random_schedules_run_to_the_end_under_every_arm(
    seed: int, make_controller: MakeController, tmp_path
) -> None:
    schedule = random_change_points(
        num_sites=SITES, num_periods=PERIODS, seed=seed, rate=0.25, num_concepts=3
    )
    concepts = schedule.concepts.astype(np.float64)
    for mode, policy in ARMS:
        run_dir = tmp_path / f"{mode}-{policy}"
        controller, _ = make_controller(
            concepts,
            run_dir=run_dir,
            adaptation={"mode": mode},
            policy=POLICIES[policy],
            detectors=[BinomialErrorTest(arl=5000, reference_periods=2)],
            site_changes=schedule.site_changes(),
        )
        summary = controller.run()
        assert summary["periods"] == PERIODS
        with Registry(run_dir) as registry:
            assert registry.check_invariants() == [], (mode, policy)
            assert registry.champion() is not None
        with open(run_dir / "timeline.csv") as f:
            assert [int(r["period"]) for r in csv.DictReader(f)] == list(range(PERIODS))
        if mode != "single":
            with open(run_dir / "clusters.csv") as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == SITES * PERIODS  # every site has a cluster every period
            with Registry(run_dir) as registry:
                known = {v.version for v in registry.versions()}
            assert {int(r["version"]) for r in rows} <= known

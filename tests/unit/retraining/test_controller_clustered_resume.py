"""A killed adaptation=clustered run resumes and ends as the uninterrupted run would.

As in ``test_controller_resume.py``, the fake federation raises :class:`Crash` at a chosen
request; a new controller resumes from the folder alone. A clustered period holds several
decisions and trainings (a new concept, a refine, refreshes, a watch and its rollback), so the
run is also killed after each period's decisions and before its checkpoint.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Crash, FakeFederation, MakeController, run_killed
from test_controller_resume import fingerprint

from fedretrain.registry import Registry

# Sites 0-1 flip at period 2 and back at 7, sites 2-3 flip at 4 (they join cluster 1: a
# refine), sites 4-5 never; cluster 1's buffers grow (refreshes), and at period 5 its sites
# dip to 0.9 and come back at 6 (a refresh that learnt the dip is rolled back).
CONCEPTS = np.zeros((6, 10))
CONCEPTS[0:2, 2:7] = 1
CONCEPTS[2:4, 4:] = 1
CONCEPTS[0:4, 5] = 0.9
ADAPTATION = {"mode": "clustered", "buffer_periods": 3, "refresh": True}
RELEASE = {"watch_periods": 1, "rollback_margin": 0.02}
SCENARIOS = {  # (adaptation, release)
    "clustered": (ADAPTATION, RELEASE),
    "oracle": ({**ADAPTATION, "mode": "oracle"}, RELEASE),
    "canary": (ADAPTATION, {**RELEASE, "canary_fraction": 0.5, "canary_periods": 2}),
}


def clustered_fingerprint(run_dir: Path) -> dict[str, Any]:
    """:func:`fingerprint` and what a clustered run adds: each site's cluster and model every
    period, and the registry's cluster lineages and champions."""
    with open(run_dir / "clusters.csv") as f:
        assignments = [tuple(row.values()) for row in csv.DictReader(f)]
    with Registry(run_dir) as registry:
        lineage = [(v.version, v.cluster, v.status.value) for v in registry.versions()]
        champions = registry.cluster_champions()
        problems = registry.check_invariants()
    return {
        **fingerprint(run_dir),
        "clusters": assignments,
        "lineage": lineage,
        "champions": champions,
        "problems": problems,
    }


def build(
    make_controller: MakeController,
    mode: str,
    run_dir: Path,
    resume: bool = False,
    crash_after: int | None = None,
) -> Any:
    adaptation, release = SCENARIOS[mode]
    return make_controller(
        CONCEPTS,
        adaptation=adaptation,
        release=release,
        run_dir=run_dir,
        resume=resume,
        federation=FakeFederation(CONCEPTS, step=0.1, crash_after=crash_after),
    )[0]


@pytest.mark.parametrize("mode", SCENARIOS)
def test_the_scenario_exercises_every_clustered_decision(
    make_controller: MakeController, tmp_path: Path, mode: str
) -> None:
    build(make_controller, mode, tmp_path / "whole").run()
    run = clustered_fingerprint(tmp_path / "whole")
    actions = ";".join(row["action"] for row in run["timeline"])
    assert "new cluster 1" in actions and "refresh 1" in actions
    kinds = {kind for kind, *_ in run["events"]}
    assert {"gate", "promote", "clusters"} <= kinds
    if mode == "canary":  # each kind of canary end; the dip is caught by one
        verdicts = {d.get("cluster") for d in map(json.loads, run["decisions"].splitlines())}
        assert {"canary", "canary promote", "canary rollback", "canary cancel"} <= verdicts
    else:
        assert {"watch", "rollback", "retire"} <= kinds and "canary" not in kinds
    assert run["problems"] == [] and len(run["champions"]) >= 2


@pytest.mark.parametrize("mode", SCENARIOS)
@pytest.mark.parametrize("lives", [(5, 9, 7), (13, 4, 11, 6)])
def test_killed_again_and_again_a_clustered_run_ends_as_an_uninterrupted_one(
    make_controller: MakeController, tmp_path: Path, mode: str, lives: tuple[int, ...]
) -> None:
    build(make_controller, mode, tmp_path / "whole").run()
    killed = tmp_path / "killed"
    life = functools.partial(build, make_controller, mode, killed)
    assert run_killed(life, lives) >= 10
    assert clustered_fingerprint(killed) == clustered_fingerprint(tmp_path / "whole")


@pytest.mark.parametrize("period", range(1, CONCEPTS.shape[1]))
def test_killed_after_a_clustered_period_s_decisions_before_its_checkpoint(
    make_controller: MakeController, tmp_path: Path, period: int
) -> None:
    # The registry holds the period's versions, gates, alias moves and rollbacks, but the
    # checkpoint says the period is under way: the resumed run takes the recorded trainings
    # and decisions instead of training or deciding again.
    build(make_controller, "clustered", tmp_path / "whole").run()
    killed = build(make_controller, "clustered", tmp_path / "killed")
    complete = killed._complete

    def crash(p: int) -> None:
        if p == period:
            raise Crash(f"killed before period {p}'s checkpoint")
        complete(p)

    killed._complete = crash
    with pytest.raises(Crash):
        killed.run()
    killed.registry.close()
    resumed = build(make_controller, "clustered", tmp_path / "killed", resume=True)
    resumed.run()
    trained = [what for what, p in resumed.federation.calls if what == "train"]
    assert clustered_fingerprint(tmp_path / "killed") == clustered_fingerprint(tmp_path / "whole")
    # Not one round of the killed period is trained again.
    assert len(trained) == sum(_rounds_in(tmp_path / "whole", p) for p in range(period + 1, 10))


def _rounds_in(run_dir: Path, period: int) -> int:
    with open(run_dir / "timeline.csv") as f:
        return next(int(r["rounds"]) for r in csv.DictReader(f) if int(r["period"]) == period)

"""Gate, canary, watch, rollback and reuse, driven through the fake federation (conftest).

Concepts are chosen so that which model wins where is plain arithmetic: a model ``w`` scores
``1 - |w - θ|`` at a site whose concept is θ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import FakeFederation, MakeController, champion, events, versions

from fedretrain.registry import Status

SITES = 10


def concepts(*thetas: float) -> np.ndarray:
    """Every site shares the concept θ of each period."""
    return np.array([list(thetas)] * SITES)


def fast(c: np.ndarray) -> FakeFederation:
    return FakeFederation(c, step=1.0)


def test_a_canary_that_serves_its_sites_better_is_promoted(make_controller: MakeController) -> None:
    c = concepts(0, 0, 0.3, 0.3, 0.3)
    release = {"canary_fraction": 0.3, "canary_periods": 1, "watch_periods": 0}
    controller, federation = make_controller(c, release=release, federation=fast(c))
    summary = controller.run()
    v1, v2 = versions(controller.run_dir)
    assert v2.status is Status.champion
    # The candidate went out with period 3's query to 3 of 10 sites, and only then won.
    assert list(federation.canaries) == [3] and len(federation.canaries[3]) == 3
    [canary] = events(controller.run_dir, "canary")
    assert (canary.period, canary.version, canary.payload["action"]) == (3, 2, "promote")
    assert canary.payload["canary_during"]["correct"] == 3 * 100  # v2 at θ: every example
    assert canary.payload["control_during"]["correct"] == 7 * 70  # v1, 0.3 away: 70%
    assert summary["serving_version"] == 2 and summary["promotions"] == 2


def test_a_canary_that_serves_its_sites_worse_is_rolled_back(
    make_controller: MakeController,
) -> None:
    c = concepts(0, 0, 0.3, 0, 0)  # the concept comes back as the canary starts
    release = {"canary_fraction": 0.3, "canary_periods": 1, "watch_periods": 0}
    controller, _ = make_controller(c, release=release, federation=fast(c), points=[2])
    controller.run()
    v1, v2 = versions(controller.run_dir)
    assert v2.status is Status.rolled_back and v1.status is Status.champion
    [canary] = events(controller.run_dir, "canary")
    assert canary.payload["action"] == "rollback"


def test_a_new_retrain_cancels_a_running_canary(make_controller: MakeController) -> None:
    c = concepts(0, 0, 0.3, 0.6, 0.6)
    release = {"canary_fraction": 0.3, "canary_periods": 2, "watch_periods": 0}
    controller, _ = make_controller(c, release=release, federation=fast(c))
    controller.run()
    v1, v2, v3 = versions(controller.run_dir)
    assert v2.status is Status.rejected
    [cancel] = [e for e in events(controller.run_dir) if e.key == "p3-cancel"]
    assert cancel.version == 2 and "superseded by a new retrain" in cancel.payload["reason"]
    assert v3.period == 3 and v3.parent == 1  # trained from the champion, not the candidate


def test_a_fresh_champion_that_its_parent_beats_is_rolled_back(
    make_controller: MakeController,
) -> None:
    c = concepts(0, 0, 0.3, 0, 0)  # the old concept returns the period after the promotion
    controller, _ = make_controller(
        c, release={"watch_periods": 1, "rollback_margin": 0.03}, federation=fast(c), points=[2]
    )
    summary = controller.run()
    [watch] = events(controller.run_dir, "watch")
    assert watch.period == 3 and (watch.payload["champion"], watch.payload["parent"]) == (0.7, 1.0)
    [rollback] = events(controller.run_dir, "rollback")
    assert rollback.period == 3
    assert champion(controller.run_dir)[0] == 1
    assert summary["rollbacks"] == 1


def test_a_fresh_champion_that_holds_is_kept(make_controller: MakeController) -> None:
    c = concepts(0, 0, 0.3, 0.3, 0.3)
    controller, _ = make_controller(c, release={"watch_periods": 2}, federation=fast(c))
    controller.run()
    assert [e.period for e in events(controller.run_dir, "watch")] == [3, 4]
    assert events(controller.run_dir, "rollback") == []
    assert champion(controller.run_dir)[0] == 2


def test_a_recurring_concept_is_served_again_from_the_registry_without_training(
    make_controller: MakeController,
) -> None:
    c = concepts(0, 0, 0.6, 0.6, 0)
    controller, federation = make_controller(c, federation=fast(c))
    controller.run()
    v1, v2 = versions(controller.run_dir)  # no third version: v1 came back
    assert champion(controller.run_dir)[0] == 1
    assert ("train", 4) not in federation.calls
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert (timeline["action"].iloc[4], timeline["rounds"].iloc[4]) == ("reuse v1", 0)


def test_reuse_is_skipped_when_switched_off(make_controller: MakeController) -> None:
    c = concepts(0, 0, 0.6, 0.6, 0)
    controller, federation = make_controller(c, retrain={"reuse_stored": False}, federation=fast(c))
    controller.run()
    assert len(versions(controller.run_dir)) == 3
    assert ("train", 4) in federation.calls


def test_the_gate_rejects_a_candidate_worse_at_one_site_than_the_margin_allows(
    make_controller: MakeController,
) -> None:
    # Half the sites move to 0.4; the mean is 0.2: better overall, but 0.2 worse at the rest.
    c = np.array([[0, 0, 0.4]] * 5 + [[0, 0, 0.0]] * 5)
    controller, _ = make_controller(c, release={"site_margin": 0.1}, federation=fast(c))
    summary = controller.run()
    v1, v2 = versions(controller.run_dir)
    assert v2.status is Status.rejected and champion(controller.run_dir)[0] == 1
    [gate] = events(controller.run_dir, "gate")
    assert gate.payload["promote"] is False
    assert summary["rejected_candidates"] == 1

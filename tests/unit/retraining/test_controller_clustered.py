"""adaptation=clustered through the numpy fake federation (issue 14, item 2).

Site concepts θ are 0 or 1; a model ``w`` scores ``1 - |w - θ|``, so one global model can only
serve both concepts at the mean, while one model per concept serves each site fully. The
expected clusters are the true concepts: checked with scikit-learn's adjusted Rand index.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import MakeController, champion, events, versions
from sklearn.metrics import adjusted_rand_score

from fedretrain.drift.schedule import Schedule
from fedretrain.registry import Registry, Status

CLUSTERED = {"mode": "clustered"}


def staggered() -> np.ndarray:
    """Sites 0-1 flip at period 2 and back at 7, sites 2-3 flip at 4, sites 4-5 never."""
    concepts = np.zeros((6, 10))
    concepts[0:2, 2:7] = 1
    concepts[2:4, 4:] = 1
    return concepts


def changes(concepts: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    return Schedule(concepts.astype(int)).site_changes()


def rounds_in(run_dir, period: int) -> int:
    with open(run_dir / "timeline.csv") as f:
        return next(int(r["rounds"]) for r in csv.DictReader(f) if int(r["period"]) == period)


def assignment(run_dir, period: int) -> dict[int, int]:
    with open(run_dir / "clusters.csv") as f:
        return {
            int(r["site"]): int(r["cluster"])
            for r in csv.DictReader(f)
            if int(r["period"]) == period
        }


def test_staggered_concepts_are_served_one_model_each(make_controller: MakeController) -> None:
    concepts = staggered()
    single, _ = make_controller(concepts, site_changes=changes(concepts))
    single_summary = single.run()
    controller, federation = make_controller(
        concepts,
        adaptation=CLUSTERED,
        run_dir=single.run_dir.parent / "c",
        site_changes=changes(concepts),
    )
    summary = controller.run()
    run_dir = controller.run_dir
    # Every period from 1 on, the sites' clusters are their true concepts.
    for period in range(3, 10):
        found = assignment(run_dir, period)
        truth = concepts[:, period]
        if period in (4, 7):  # a change period is scored before the sites move
            continue
        assert adjusted_rand_score(truth, [found[s] for s in range(6)]) == 1.0, period
    assert summary["mean_prequential_accuracy"] > single_summary["mean_prequential_accuracy"] + 0.2
    assert summary["clusters_serving"] == 2
    # Each round trained at the sites of the cluster it was for, and nowhere else.
    periods = [period for what, period in federation.calls if what == "train"]
    trained = set(zip(periods, federation.trained_sites, strict=True))
    assert trained == {(0, None), (2, (0, 1)), (4, (0, 1, 2, 3))}
    # Period 7: sites 0-1 return to cluster 0, which was trained on them: no round at all.
    assert rounds_in(run_dir, 7) == 0
    assert assignment(run_dir, 7)[0] == 0
    decisions = [
        json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()
    ]
    kinds = {(d["period"], d.get("cluster")) for d in decisions}
    assert {(2, "new concept"), (2, "founded"), (4, "recurrence"), (7, "recurrence")} <= kinds
    assert all(d["reason"] for d in decisions)
    # Per-site detection is scored from the clusters' drift tests.
    assert summary["site_detection"]["detected"] == summary["site_detection"]["changes"] == 6
    assert summary["site_detection"]["false_alarms"] == 0


def test_synchronous_drift_collapses_to_one_model(make_controller: MakeController) -> None:
    concepts = np.zeros((5, 6))
    concepts[:, 3:] = 1
    controller, _ = make_controller(concepts, adaptation=CLUSTERED, site_changes=changes(concepts))
    summary = controller.run()
    assert summary["clusters_serving"] == 1 and summary["clusters_founded"] == 2
    assert set(assignment(controller.run_dir, 5).values()) == {1}
    assert summary["site_detection"]["detected"] == 5


def test_a_stationary_federation_trains_once_and_never_alarms(
    make_controller: MakeController,
) -> None:
    controller, _ = make_controller(np.zeros((4, 8)), adaptation=CLUSTERED, points=[])
    summary = controller.run()
    assert summary["retrain_rounds"] == 0 and summary["clusters_founded"] == 1
    assert summary["alarm_periods"] == []


def test_the_registry_holds_every_cluster_model_and_stays_consistent(
    make_controller: MakeController,
) -> None:
    controller, _ = make_controller(staggered(), adaptation=CLUSTERED)
    controller.run()
    with Registry(controller.run_dir) as registry:
        assert registry.check_invariants() == []
        champion = registry.champion()
        by_cluster = registry.cluster_champions()
        lineages = {c: [v.version for v in registry.versions_of(c)] for c in by_cluster}
    served = assignment(controller.run_dir, 9)
    kinds = [e.payload for e in events(controller.run_dir, "clusters")]
    final = kinds[-1]
    assert {int(s): c for s, c in final["assignment"].items()} == served
    # Each cluster is a lineage: every version a cluster served was trained for it, and its
    # champion alias names the version it serves at the end.
    assert by_cluster == {int(c): v for c, v in final["versions"].items()}
    with open(controller.run_dir / "clusters.csv") as f:
        for row in csv.DictReader(f):
            assert int(row["version"]) in lineages[int(row["cluster"])], row
    # The champion is the version serving the most sites: cluster 0, 4 of 6 at the end.
    assert sorted(served.values()).count(0) == 4
    assert champion is not None and champion.version == final["versions"]["0"]
    assert (controller.run_dir / "clusters.png").read_bytes()[:4] == b"\x89PNG"
    trained = [v for v in versions(controller.run_dir) if v.trigger.startswith("cluster")]
    assert trained and all(v.rounds > 0 for v in trained)


def test_the_oracle_assigns_every_site_its_true_concept(make_controller: MakeController) -> None:
    concepts = staggered()
    concepts[4, 5:] = 2  # a third concept at one site
    oracle, federation = make_controller(concepts, adaptation={"mode": "oracle"})
    summary = oracle.run()
    for period in range(1, 10):
        found = assignment(oracle.run_dir, period)
        assert adjusted_rand_score(concepts[:, period], [found[s] for s in range(6)]) == 1.0
    assert summary["clusters_serving"] == 3 and summary["adaptation"] == "oracle"
    periods = [period for what, period in federation.calls if what == "train"]
    trained = set(zip(periods, federation.trained_sites, strict=True))
    assert (5, (4,)) in trained  # the third concept trained at its one site


def test_clustered_detection_matches_the_oracle_on_clean_concepts(
    make_controller: MakeController, tmp_path
) -> None:
    concepts = staggered()
    clustered, _ = make_controller(concepts, adaptation=CLUSTERED, run_dir=tmp_path / "c")
    oracle, _ = make_controller(concepts, adaptation={"mode": "oracle"}, run_dir=tmp_path / "o")
    found, best = clustered.run(), oracle.run()
    assert found["mean_prequential_accuracy"] == pytest.approx(
        best["mean_prequential_accuracy"], abs=0.02
    )


def run_start(concepts: np.ndarray, site: int, period: int) -> int:
    """The first period of ``site``'s current stretch of one concept, by the matrix."""
    start = period
    while start > 0 and concepts[site, start - 1] == concepts[site, period]:
        start -= 1
    return start


@pytest.mark.parametrize("buffer", [1, 2, 4])
def test_a_cluster_trains_on_its_sites_windows_since_they_joined(
    make_controller: MakeController, buffer: int
) -> None:
    concepts = staggered()
    controller, federation = make_controller(
        concepts,
        adaptation={**CLUSTERED, "buffer_periods": buffer},
        site_changes=changes(concepts),
    )
    controller.run()
    periods = [period for what, period in federation.calls if what == "train"]
    cluster_rounds = 0
    for period, sites, since in zip(
        periods, federation.trained_sites, federation.since, strict=True
    ):
        if sites is None:  # period 0: the first model, every site on its one window
            assert since == {}
            continue
        cluster_rounds += 1
        # The windows of each site's current concept so far, the last `buffer` of them.
        expected = {s: max(run_start(concepts, s, period), period - buffer + 1) for s in sites}
        assert since == expected, period
    assert cluster_rounds > 0
    # Period 4: sites 2-3 join sites 0-1's cluster; 0-1 bring their windows since period 2.
    refine = [v for v in versions(controller.run_dir) if v.trigger == "cluster 1: refine"]
    assert refine, [v.trigger for v in versions(controller.run_dir)]
    windows = {s: 4 + 1 - max(run_start(concepts, s, 4), 4 - buffer + 1) for s in range(4)}
    n = federation.train_n
    assert refine[0].samples == {str(s): n * w for s, w in windows.items()}


def test_refresh_trains_a_new_concept_on_its_growing_buffer(
    make_controller: MakeController,
) -> None:
    concepts = np.zeros((4, 9))
    concepts[0:2, 3:] = 1  # sites 0-1 turn to a new concept at period 3 and stay there
    controller, federation = make_controller(
        concepts,
        adaptation={**CLUSTERED, "buffer_periods": 3, "refresh": True},
        site_changes=changes(concepts),
    )
    controller.run()
    periods = [period for what, period in federation.calls if what == "train"]
    starts = {
        period: since
        for period, sites, since in zip(
            periods, federation.trained_sites, federation.since, strict=True
        )
        if sites == (0, 1)
    }
    # Founded at 3 on its first window, refreshed at 4 and 5 as the buffer grows to 3
    # windows, then left alone: nothing new to learn of a full buffer's concept.
    assert starts == {3: {0: 3, 1: 3}, 4: {0: 3, 1: 3}, 5: {0: 3, 1: 3}}
    # Cluster 0 (sites 2-3, from period 0) is refreshed at 1 and 2 the same way.
    assert {p for p, sites in zip(periods, federation.trained_sites, strict=True)} == {
        0,
        1,
        2,
        3,
        4,
        5,
    }
    with open(controller.run_dir / "decisions.jsonl") as f:
        reasons = [json.loads(line)["reason"] for line in f]
    assert any("refreshed on the buffers: cluster 1" in r for r in reasons)


@pytest.mark.parametrize("margin, rolled_back", [(0.03, True), (0.5, False)])
def test_a_clusters_fine_tune_that_its_parent_beats_is_rolled_back(
    make_controller: MakeController, margin: float, rolled_back: bool
) -> None:
    # Issue 14, item 3: watch and rollback per cluster. θ dips to 0.1 in period 1, too
    # little to be drift; the refresh on windows 0-1 learns w = 0.05, and θ is 0 again in
    # period 2, where the parent (w = 0) scores 1.0 against 0.95.
    concepts = np.zeros((4, 4))
    concepts[:, 1] = 0.1
    controller, _ = make_controller(
        concepts,
        adaptation={**CLUSTERED, "buffer_periods": 3, "refresh": True},
        release={"watch_periods": 1, "rollback_margin": margin},
        site_changes=changes(concepts),
    )
    controller.run()
    run_dir = controller.run_dir
    with open(run_dir / "clusters.csv") as f:
        served = {int(r["period"]): int(r["version"]) for r in csv.DictReader(f)}
    refreshed = served[1]
    assert refreshed != served[0]
    [watch] = [e for e in events(run_dir, "watch") if e.period == 2]
    assert watch.version == refreshed and watch.payload["cluster"] == 0
    assert (watch.payload["champion"], watch.payload["parent"]) == (0.95, 1.0)
    rollbacks = events(run_dir, "rollback")
    by_version = {v.version: v for v in versions(run_dir)}
    if rolled_back:
        [rollback] = rollbacks
        assert rollback.period == 2 and rollback.version == served[0]
        assert served[2] == served[0]  # the cluster serves its parent again
        assert by_version[refreshed].status is Status.rolled_back
        with Registry(run_dir) as registry:
            assert registry.check_invariants() == []
            assert registry.cluster_champions()[0] == served[0]
        decisions = [
            json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()
        ]
        assert any(d.get("cluster") == "rollback" and d["id"] == 0 for d in decisions)
    else:
        assert rollbacks == [] and served[2] != served[0]


def test_a_smaller_clusters_rollback_leaves_the_champion_alone(
    make_controller: MakeController,
) -> None:
    # Sites 0-1 form cluster 1 at period 1; θ dips to 0.9 at period 3 (not drift), the
    # refresh learns it, θ is 1 again at 4: cluster 1 goes back to its parent while the
    # registry's champion (cluster 0, four sites) stays.
    concepts = np.zeros((6, 6))
    concepts[0:2, 1:] = 1
    concepts[0:2, 3] = 0.9
    controller, _ = make_controller(
        concepts,
        adaptation={**CLUSTERED, "buffer_periods": 3, "refresh": True},
        release={"watch_periods": 1, "rollback_margin": 0.02},
        site_changes=changes(concepts),
    )
    controller.run()
    run_dir = controller.run_dir
    with open(run_dir / "clusters.csv") as f:
        rows = list(csv.DictReader(f))
    served = {(int(r["period"]), int(r["cluster"])): int(r["version"]) for r in rows}
    [rollback] = events(run_dir, "rollback")
    assert rollback.period == 4 and rollback.payload["cluster"] == 1
    withdrawn = rollback.payload["from"]
    assert served[(3, 1)] == withdrawn and served[(4, 1)] == rollback.version
    by_version = {v.version: v for v in versions(run_dir)}
    assert by_version[withdrawn].status is Status.rolled_back
    assert champion(run_dir)[0] == served[(4, 0)]
    with Registry(run_dir) as registry:
        assert registry.check_invariants() == []
        assert registry.cluster_champions()[1] == rollback.version
        assert registry.get(withdrawn).cluster == 1


def _decisions(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]


def _canary_run(make_controller: MakeController, concepts: np.ndarray, periods: int = 1):  # noqa: ANN202
    controller, federation = make_controller(
        concepts,
        adaptation={**CLUSTERED, "buffer_periods": 3, "refresh": True},
        release={"canary_fraction": 0.5, "canary_periods": periods, "watch_periods": 0},
        site_changes=changes(concepts),
    )
    controller.run()
    return controller.run_dir, federation


@pytest.mark.parametrize("dip", [False, True], ids=["no-worse", "worse"])
def test_a_clusters_fine_tune_is_canaried_on_its_own_sites(
    make_controller: MakeController, dip: bool
) -> None:
    # Sites 0-3 form cluster 1 at period 1; its buffers grow, so it is refreshed at period 2.
    # With the dip, θ is 0.9 at period 2 (the refresh learns it) and 1 again at 3.
    concepts = np.zeros((6, 5))
    concepts[0:4, 1:] = 1
    if dip:
        concepts[0:4, 2] = 0.9
    run_dir, federation = _canary_run(make_controller, concepts)
    [start] = [d for d in _decisions(run_dir) if d.get("cluster") == "canary" and d["id"] == 1]
    assert start["period"] == 2
    candidate, canaries = start["version"], start["sites"]
    assert len(canaries) == 2 and set(canaries) < {0, 1, 2, 3}
    controls = sorted({0, 1, 2, 3} - set(canaries))
    by_version = {v.version: v for v in versions(run_dir)}
    parent = by_version[candidate].parent
    assert by_version[candidate].cluster == 1
    # Period 3: the canary sites serve the candidate, the cluster's others its parent.
    with Registry(run_dir) as registry:
        w_candidate = float(registry.load(candidate)["w"][0])
        w_parent = float(registry.load(parent)["w"][0])
        champions = registry.cluster_champions()
        [verdict] = [e for e in registry.events(kind="canary") if e.payload["cluster"] == 1]
    served = federation.served[3]
    assert [served[s] for s in canaries] == [w_candidate] * 2
    assert [served[s] for s in controls] == [w_parent] * 2

    # The oracle: difference in differences of the served models' accuracy, 1 - |w - θ|.
    def acc(w: float, period: int) -> float:
        return max(0.0, 1.0 - abs(w - concepts[0, period]))

    did = (acc(w_candidate, 3) - acc(w_parent, 2)) - (acc(w_parent, 3) - acc(w_parent, 2))
    assert verdict.period == 3 and verdict.payload["cluster"] == 1
    promoted = bool(did >= -0.02)  # release.canary_margin
    assert promoted is (not dip)
    assert verdict.payload["action"] == ("promote" if promoted else "rollback")
    assert champions[1] == (candidate if promoted else parent)
    withdrawn = by_version[candidate].status is Status.rolled_back
    assert withdrawn is not promoted
    with Registry(run_dir) as registry:
        assert registry.check_invariants() == []


def test_a_cluster_under_canary_is_not_fine_tuned_until_its_verdict(
    make_controller: MakeController,
) -> None:
    concepts = np.zeros((6, 6))
    concepts[0:4, 1:] = 1
    run_dir, federation = _canary_run(make_controller, concepts, periods=2)
    [start] = [d for d in _decisions(run_dir) if d.get("cluster") == "canary" and d["id"] == 1]
    [verdict] = [d for d in _decisions(run_dir) if d.get("cluster") == "canary promote"
                 and d["id"] == 1]  # fmt: skip
    assert (start["period"], verdict["period"]) == (2, 4)
    periods = [period for what, period in federation.calls if what == "train"]
    trained = {p for p, sites in zip(periods, federation.trained_sites, strict=True)
               if sites is not None and set(sites) & {0, 1, 2, 3}}  # fmt: skip
    assert 3 not in trained and {1, 2} <= trained


def test_a_canary_whose_cluster_changes_ends_and_the_parent_serves_on(
    make_controller: MakeController,
) -> None:
    # Cluster 1 (sites 0-3) is canaried from period 3, but site 3 flips back at 3.
    concepts = np.zeros((6, 5))
    concepts[0:4, 1:] = 1
    concepts[3, 3:] = 0
    run_dir, _ = _canary_run(make_controller, concepts)
    start = next(d for d in _decisions(run_dir) if d.get("cluster") == "canary" and d["id"] == 1)
    [ended] = [d for d in _decisions(run_dir) if d.get("cluster") == "canary cancel"]
    assert ended["period"] == 3 and ended["version"] == start["version"]
    assert "sites changed" in ended["reason"]
    with Registry(run_dir) as registry:
        assert registry.get(start["version"]).status is Status.rolled_back
        assert registry.cluster_champions()[1] != start["version"]
        verdicts = registry.events(kind="canary")
        assert [e.period for e in verdicts if e.version == start["version"]] == []
        assert registry.check_invariants() == []


def test_a_canary_ends_when_its_parent_is_rolled_back_under_it(
    make_controller: MakeController,
) -> None:
    # Cluster 1 (sites 0-3) learns a dip to 0.9 (periods 2-4): v4 takes over at 3 and is
    # watched for two periods; v6, its own fine-tune, is canaried from 5, when θ is 1 again
    # and v4's watch sends the cluster back to v2: v6's comparison with v4 no longer holds.
    concepts = np.zeros((6, 7))
    concepts[0:4, 1:] = 1
    concepts[0:4, 2:5] = 0.9
    controller, _ = make_controller(
        concepts,
        adaptation={**CLUSTERED, "buffer_periods": 5, "refresh": True},
        release={"canary_fraction": 0.5, "canary_periods": 1, "watch_periods": 2},
        site_changes=changes(concepts),
    )
    controller.run()
    run_dir = controller.run_dir
    ones = [d for d in _decisions(run_dir) if d.get("id") == 1]
    kinds = [(d["period"], d["cluster"]) for d in ones]
    assert kinds[:5] == [(1, "founded"), (2, "canary"), (3, "canary promote"), (4, "canary"),
                         (5, "rollback")]  # fmt: skip
    [cancel] = [d for d in ones if d["cluster"] == "canary cancel"]
    assert cancel["period"] == 5 and "was withdrawn during the canary" in cancel["reason"]
    with Registry(run_dir) as registry:
        assert registry.get(cancel["version"]).status is Status.rolled_back
        assert registry.cluster_champions()[1] == ones[0]["version"]  # v2 serves again
        assert [e.version for e in registry.events(kind="canary")
                if e.payload["cluster"] == 1 and e.period == 5] == []  # fmt: skip
        assert registry.check_invariants() == []

"""Fairness in the gate (issue 17, item 4): each group of users' recall from summed per-group
confusion matrices (scikit-learn's balanced accuracy as the oracle), and a candidate that helps
the majority while it hurts a minority is refused, through the release lifecycle and the
registry, even though it passes the federation's and every site's margins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from fedretrain.config import ReleaseConfig
from fedretrain.metrics import group_confusion, group_recalls
from fedretrain.registry import Registry, Status, gate
from fedretrain.retraining.lifecycle import Lifecycle

RNG = np.random.default_rng(0)


def predictions(y: np.ndarray, right: float) -> np.ndarray:
    """Labels of a binary task, each right with probability ``right``."""
    return np.where(RNG.random(len(y)) < right, y, 1 - y)


# 900 majority samples (group 0), 100 minority (group 1), two sites of 500 each.
Y = RNG.integers(0, 2, 1000)
group_of = np.r_[np.zeros(900, np.int64), np.ones(100, np.int64)]
RNG.shuffle(group_of)
site_of = np.r_[np.zeros(500, np.int64), np.ones(500, np.int64)]
CHAMPION = np.where(group_of == 0, predictions(Y, 0.80), predictions(Y, 0.80))
CANDIDATE = np.where(group_of == 0, predictions(Y, 0.90), predictions(Y, 0.55))


def site_scores(pred: np.ndarray) -> dict[int, tuple[int, int]]:
    return {s: (int((pred == Y)[site_of == s].sum()), int((site_of == s).sum())) for s in (0, 1)}


def by_group(pred: np.ndarray) -> np.ndarray:
    """Each site's per-group confusion, summed: what the federation hands the gate."""
    return sum(
        group_confusion(Y[site_of == s], pred[site_of == s], group_of[site_of == s], 2, 2)
        for s in (0, 1)
    )


def test_group_recall_is_each_groups_balanced_accuracy() -> None:
    recalls = group_recalls(by_group(CANDIDATE))
    for g in (0, 1):
        mask = group_of == g
        assert recalls[g] == pytest.approx(balanced_accuracy_score(Y[mask], CANDIDATE[mask]))


def test_a_candidate_that_helps_the_majority_and_hurts_a_minority_is_refused() -> None:
    args = (site_scores(CANDIDATE), site_scores(CHAMPION), 0.0, 0.05)
    blind = gate(*args)  # no groups: the better average and no site regressing pass it
    assert blind.promote and blind.candidate_accuracy > blind.champion_accuracy
    fair = gate(
        *args,
        candidate_groups=by_group(CANDIDATE),
        champion_groups=by_group(CHAMPION),
        group_margin=0.1,
    )
    assert not fair.promote
    minority = fair.groups[1]
    assert minority.regressed and minority.delta < -0.1 and minority.samples == 100
    assert not fair.groups[0].regressed and fair.groups[0].delta > 0
    assert "group 1 loses" in fair.reason and "more than group_margin 0.1" in fair.reason
    reported = gate(
        *args,
        candidate_groups=by_group(CANDIDATE),
        champion_groups=by_group(CHAMPION),
        group_margin=None,
    )
    assert reported.promote and reported.to_dict()["groups"][1]["regressed"] is False
    assert reported.to_dict()["groups"][1]["delta"] == pytest.approx(minority.delta)


def test_a_group_with_too_few_samples_cannot_block() -> None:
    candidate = np.array([[[5, 0], [0, 5]], [[0, 1], [0, 0]]])  # group 1: one sample, wrong
    champion = np.array([[[5, 0], [0, 5]], [[1, 0], [0, 0]]])
    decision = gate(
        {0: (10, 11)}, {0: (11, 11)}, 0.1, 0.1, min_site_total=5,
        candidate_groups=candidate, champion_groups=champion, group_margin=0.0,
    )  # fmt: skip
    assert decision.promote and not decision.groups[1].counted


def test_the_lifecycle_rejects_the_unfair_candidate_and_records_the_groups(
    tmp_path: Path,
) -> None:
    weights = {"w": np.zeros(2, np.float32)}
    with Registry(tmp_path / "run", create=True) as registry:
        registry.register(
            weights, key="p0", trigger="initial", reason="r", period=0, status=Status.champion
        )
        version = registry.register(weights, key="p1", trigger="drift", reason="r", period=1)
        lifecycle = Lifecycle(registry, ReleaseConfig(group_margin=0.1), seed=0)
        passed = lifecycle.release(
            version.version,
            1,
            site_scores(CANDIDATE),
            site_scores(CHAMPION),
            candidate_groups=by_group(CANDIDATE),
            champion_groups=by_group(CHAMPION),
        )
        assert not passed
        assert registry.get(version.version).status is Status.rejected
        payload = registry.events(kind="gate")[-1].payload
        assert payload["group_margin"] == 0.1
        assert [g["regressed"] for g in payload["groups"]] == [False, True]

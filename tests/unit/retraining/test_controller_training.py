"""The period loop and the plateau search, driven through the fake federation (conftest)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FakeFederation, MakeController, champion, versions

from fedretrain.registry import Status

SITES = 4


def shift(at: int, periods: int, before: float = 0.0, after: float = 0.3) -> np.ndarray:
    """Every site's concept moves from ``before`` to ``after`` at period ``at``."""
    row = [before] * at + [after] * (periods - at)
    return np.array([row] * SITES)


def test_the_initial_model_trains_to_a_plateau_and_is_the_champion(
    make_controller: MakeController,
) -> None:
    controller, federation = make_controller(np.zeros((SITES, 3)), retrain={"patience": 2})
    summary = controller.run()
    # A fresh model reaches θ in one round; then two rounds without gain end the search.
    [v1] = versions(controller.run_dir)
    assert (v1.version, v1.status, v1.parent, v1.rounds) == (1, Status.champion, None, 3)
    assert v1.metrics["validation_accuracy"] == 1.0
    assert summary["retrain_rounds"] == 0 and summary["versions"] == 1
    # One message wave per round: a fourth round trained ahead of the decision to stop, and
    # was dropped; metrics.csv has the three kept.
    assert [c for c in federation.calls if c[0] == "train"] == [("train", 0)] * 4
    rows = pd.read_csv(controller.run_dir / "metrics.csv")
    assert rows["round"].tolist() == [1, 2, 3]
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert timeline["action"].tolist() == ["initial", "serve", "serve"]
    assert (controller.run_dir / "model.safetensors").exists()


def test_a_shift_is_learnt_warm_and_the_candidate_promoted(make_controller: MakeController) -> None:
    concepts = shift(2, 4)
    controller, _ = make_controller(concepts, federation=FakeFederation(concepts, step=1.0))
    controller.run()
    v1, v2 = versions(controller.run_dir)
    assert (v2.parent, v2.trigger, v2.period, v2.rounds) == (1, "warm", 2, 3)
    assert v2.status is Status.champion and v1.status is not Status.champion
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert timeline["retrain"].tolist() == [True, False, True, False]
    # Prequential: period 2 is scored with the old model (θ moved by 0.3), period 3 with v2.
    assert timeline["accuracy"].round(4).tolist() == [1.0, 1.0, 0.7, 1.0]


def test_a_stalled_warm_start_is_abandoned_for_a_fresh_model(
    make_controller: MakeController,
) -> None:
    # Warm weights move 0.1 a round: after reinit_after=2 rounds the best is 0.9, more than
    # stall_gap=0.05 below the champion's own 1.0, so the search starts again from scratch.
    concepts = shift(2, 3)
    controller, _ = make_controller(
        concepts, retrain={"reinit_after": 2, "stall_gap": 0.05, "patience": 2}
    )
    controller.run()
    v2 = versions(controller.run_dir)[-1]
    assert v2.trigger == "reinit"
    assert v2.rounds == 5  # 2 warm, 1 fresh that reaches θ, 2 without gain
    assert v2.metrics["validation_accuracy"] == 1.0


def test_no_reinitialisation_when_it_is_switched_off(make_controller: MakeController) -> None:
    concepts = shift(2, 3)
    controller, _ = make_controller(concepts, retrain={"reinit_after": None, "max_rounds": 2})
    controller.run()
    v2 = versions(controller.run_dir)[-1]
    # Still gaining 0.1 a round and stalled below the champion's 1.0: the cap stops it, warm.
    assert (v2.trigger, v2.rounds) == ("warm", 2)
    assert v2.metrics["validation_accuracy"] == pytest.approx(0.9)


@pytest.mark.parametrize(("max_rounds", "patience"), [(3, 5), (10, 1), (10, 4)])
def test_the_search_stops_at_the_cap_or_after_patience_rounds_without_gain(
    make_controller: MakeController, max_rounds: int, patience: int
) -> None:
    concepts = shift(2, 3, after=5.0)  # far: warm steps of 0.01 gain 0.01 a round, forever
    federation = FakeFederation(concepts, step=0.01)
    controller, _ = make_controller(
        concepts,
        retrain={"max_rounds": max_rounds, "patience": patience, "reinit_after": None},
        federation=federation,
    )
    controller.run()
    v1, v2 = versions(controller.run_dir)
    # The initial search: one round to θ, then `patience` rounds without gain (or the cap).
    assert v1.rounds == min(1 + patience, max_rounds)
    # The retrain starts where nothing scores (|w - θ| > 1): its first round sets the best,
    # and no later one gains anything.
    assert v2.rounds == min(1 + patience, max_rounds)
    assert v2.metrics["validation_accuracy"] == 0.0
    metrics = pd.read_csv(controller.run_dir / "metrics.csv")
    assert len(metrics) == v1.rounds + v2.rounds


def test_rounds_whose_quorum_failed_leave_the_weights_and_count_no_sites(
    make_controller: MakeController,
) -> None:
    concepts = shift(2, 3)
    federation = FakeFederation(concepts, skip_rounds=True)
    controller, _ = make_controller(
        concepts, retrain={"patience": 2, "reinit_after": None}, federation=federation
    )
    controller.run()
    metrics = pd.read_csv(controller.run_dir / "metrics.csv")
    assert (metrics["train_clients"] == 0).all()
    # Nothing was learnt: the serving model is still the fresh one, scoring 0.7 after the shift.
    _, weights = champion(controller.run_dir)
    assert weights["w"].tolist() == [0.0]
    assert pd.read_csv(controller.run_dir / "timeline.csv")["validation_accuracy"].iloc[2] == 0.7


def test_the_registry_records_the_rounds_that_trained_and_each_site_s_training_examples(
    make_controller: MakeController,
) -> None:
    """Issue 18, item 9: a budget-limited retrain was recorded with every round it ran, and
    each version's samples were the sites' holdout counts."""
    concepts = shift(2, 3)
    # Initial training: 3 rounds. After 2 more every site declines (its budget is spent).
    federation = FakeFederation(concepts, n=100, train_n=400, budget_rounds=5)
    controller, _ = make_controller(
        concepts, retrain={"patience": 2, "reinit_after": None}, federation=federation
    )
    controller._lagged = False  # budgets are spent under DP-SGD only, which keeps two waves
    controller.run()
    v1, v2 = versions(controller.run_dir)
    metrics = pd.read_csv(controller.run_dir / "metrics.csv")
    ran = metrics[metrics["round"] > v1.rounds]
    assert len(ran) == 4 and ran["train_clients"].tolist() == [SITES, SITES, 0, 0]
    assert (v1.rounds, v2.rounds) == (3, 2)
    assert v1.samples == v2.samples == {str(s): 400 for s in range(SITES)}
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert timeline["rounds"].tolist() == [3, 0, 4]  # rounds run, trained or not


def test_a_period_without_data_is_skipped_and_recorded(make_controller: MakeController) -> None:
    concepts = shift(2, 4)

    class Empty(FakeFederation):
        def collect_stats(self, server_round, weights, period, edges, canary=None):  # type: ignore[no-untyped-def]
            collected = super().collect_stats(server_round, weights, period, edges, canary)
            if period != 1:
                return collected
            for window in collected.stats.sites.values():
                object.__setattr__(window, "n", 0)
                window.confusion[:] = 0
            return collected

    controller, _ = make_controller(concepts, federation=Empty(concepts, step=1.0))
    controller.run()
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert timeline["reason"].iloc[1] == "no new data at any site"
    assert timeline["retrain"].tolist() == [True, False, True, False]


def test_the_summary_counts_what_retraining_cost(make_controller: MakeController) -> None:
    """Issue 17, item 5: site-rounds and model bytes of the retrains, counted against the
    fake federation's own record of which sites each round trained."""
    concepts = shift(2, 5)
    controller, federation = make_controller(concepts, federation=FakeFederation(concepts))
    summary = controller.run()
    periods = [period for what, period in federation.calls if what == "train"]
    per_round = [SITES if s is None else len(s) for s in federation.trained_sites]
    expected = sum(n for p, n in zip(periods, per_round, strict=True) if p > 0)
    assert expected > 0 and summary["retrain_site_rounds"] == expected
    model_bytes = sum(a.nbytes for a in champion(controller.run_dir)[1].values())
    assert summary["model_bytes"] == model_bytes == 16  # w and age, 8 bytes each
    assert summary["retrain_bytes"] == 2 * model_bytes * expected
    assert summary["retrain_megabytes"] == pytest.approx(summary["retrain_bytes"] / 1e6)
    assert "privacy" not in summary  # no DP-SGD


def test_a_round_that_trained_no_site_costs_nothing(make_controller: MakeController) -> None:
    concepts = shift(2, 4)
    federation = FakeFederation(concepts, budget_rounds=0)  # every site declines
    controller, _ = make_controller(concepts, federation=federation)
    summary = controller.run()
    assert summary["retrain_site_rounds"] == 0 and summary["retrain_bytes"] == 0

"""Issue 17, items 2 and 3: ``retrain.strategy``, auto's tournament and the proximal term
anchored at the champion, driven through the fake federation (conftest).

In the fake a fresh model (age 0) jumps to the sites' mean θ in one round and a trained one
moves ``step`` a round, so which strategy wins where follows by hand: after a far shift fresh
weights (full) win, after a near one warm weights get there too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import FakeFederation, MakeController, champion, events, run_killed, versions
from test_controller_resume import fingerprint

from fedretrain.registry import Status
from fedretrain.retraining.controller import Controller

SITES = 4
TOURNAMENT = {"candidates": ["incremental", "full", "transfer"], "reinit_after": None}


def shift(at: int, periods: int, after: float) -> np.ndarray:
    return np.array([[0.0] * at + [after] * (periods - at)] * SITES)


def decisions(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]


def test_after_a_far_shift_the_tournament_picks_fresh_weights_and_rejects_the_others(
    make_controller: MakeController,
) -> None:
    # θ moves 0 -> 2: warm weights (and a re-initialised head on a trained age) move 0.1 a
    # round and score 0 within the cap; fresh weights reach θ in one round.
    c = shift(2, 3, after=2.0)
    controller, federation = make_controller(
        c, retrain={**TOURNAMENT, "max_rounds": 4}, federation=FakeFederation(c, step=0.1)
    )
    controller._lagged = False  # the per-call lists below are two waves' (one wave adds
    # the rounds it trains ahead of a stop and drops: test_controller_one_wave)
    summary = controller.run()
    v1, incremental, full, transfer = versions(controller.run_dir)
    assert [v.trigger for v in (incremental, full, transfer)] == ["warm", "full", "transfer"]
    assert full.status is Status.champion and full.metrics["validation_accuracy"] == 1.0
    assert incremental.status is transfer.status is Status.rejected
    assert champion(controller.run_dir)[0] == full.version
    # Every candidate is a version with its own lineage; transfer trained its head alone.
    assert transfer.trained == ("w",) and incremental.trained is None
    rejected = {e.version: e.payload["reason"] for e in events(controller.run_dir, "reject")}
    assert set(rejected) == {incremental.version, transfer.version}
    assert all(f"lost the tournament to v{full.version}" in r for r in rejected.values())
    [tournament] = [d for d in decisions(controller.run_dir) if "tournament" in d]
    assert tournament["winner"] == "full" and tournament["period"] == 2
    standings = tournament["tournament"]
    assert [s["strategy"] for s in standings] == ["full", "incremental", "transfer"]
    assert "full won on federated validation" in str(tournament["why"])
    # The retrain's cost is every candidate's rounds; the timeline names the winner.
    rounds = incremental.rounds + full.rounds + transfer.rounds
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert (timeline["action"].iloc[2], timeline["rounds"].iloc[2]) == ("full", rounds)
    assert summary["retrain_rounds"] == rounds
    # What each candidate's rounds asked of the sites: transfer trains w only; full trains on
    # the windows since the change (the period itself: buffer_periods=1).
    retrain = slice(v1.rounds, None)
    trainables = federation.trainables[retrain]
    assert trainables == [None] * (incremental.rounds + full.rounds) + [frozenset({"w"})] * (
        transfer.rounds
    )
    since = federation.since[retrain]
    full_rounds = since[incremental.rounds : incremental.rounds + full.rounds]
    assert full_rounds == [{s: 2 for s in range(SITES)}] * full.rounds


def test_a_tie_goes_to_the_earlier_candidate(make_controller: MakeController) -> None:
    # θ moves 0 -> 0.3: warm weights get there in 3 rounds and fresh ones in 1; both score 1.
    c = shift(2, 3, after=0.3)
    controller, _ = make_controller(
        c, retrain={"candidates": ["incremental", "full"]}, federation=FakeFederation(c, step=0.1)
    )
    controller.run()
    _, incremental, full = versions(controller.run_dir)
    assert incremental.metrics["validation_accuracy"] == full.metrics["validation_accuracy"] == 1
    assert incremental.status is Status.champion and full.status is Status.rejected


def test_the_winner_still_meets_the_gate(make_controller: MakeController) -> None:
    # Half the sites move to 0.6, half stay at 0: any w between scores 0.7 overall, so full
    # (first in the list) wins the tie at 0.3, 0.3 worse than the champion where θ stayed.
    c = np.array([[0, 0, 0.6]] * 2 + [[0, 0, 0.0]] * 2)
    controller, _ = make_controller(
        c,
        retrain={"candidates": ["full", "incremental"], "max_rounds": 3},
        release={"site_margin": 0.1},
        federation=FakeFederation(c, step=0.1),
    )
    controller.run()
    _, full, incremental = versions(controller.run_dir)
    assert full.trigger == "full" and full.metrics["validation_accuracy"] == pytest.approx(0.7)
    assert full.status is incremental.status is Status.rejected
    assert champion(controller.run_dir)[0] == 1
    gate = [e for e in events(controller.run_dir, "gate") if e.version == full.version]
    assert len(gate) == 1 and not gate[0].payload["promote"]
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert timeline["action"].iloc[2] == "full, rejected"


class Recording(FakeFederation):
    """The fake, keeping the weights each training round was sent."""

    def __init__(self, concepts: np.ndarray, **kwargs: Any) -> None:
        super().__init__(concepts, **kwargs)
        self.sent: list[dict[str, float]] = []

    def train_round(self, server_round: int, weights: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent.append({k: float(np.asarray(v)[0]) for k, v in weights.items()})
        return super().train_round(server_round, weights, *args, **kwargs)


@pytest.mark.parametrize("strategy", ["incremental", "full", "transfer"])
def test_a_fixed_strategy_trains_its_one_candidate_from_its_own_start(
    make_controller: MakeController, tmp_path: Path, strategy: str
) -> None:
    c = shift(2, 3, after=2.0)
    federation = Recording(c, step=0.1)
    # reinit_after would re-initialise a stalled warm start under auto; a fixed strategy does
    # what it says.
    controller, _ = make_controller(
        c,
        retrain={"strategy": strategy, "reinit_after": 2, "max_rounds": 3},
        federation=federation,
    )
    controller.run()
    v1, v2 = versions(controller.run_dir)
    trigger = {"incremental": "warm"}.get(strategy, strategy)
    assert (v2.trigger, v2.parent, v2.rounds) == (trigger, 1, 3)
    assert v2.trained == (("w",) if strategy == "transfer" else None)
    head = frozenset({"w"}) if strategy == "transfer" else None
    assert federation.trainables[v1.rounds :] == [head] * 3
    # Where the retrain started: the champion (w = 0 after θ = 0; its best round, the first,
    # made it age 1), fresh weights (age 0), or the champion with a fresh head (w = 0, age 1).
    first = federation.sent[v1.rounds]
    age = {"incremental": 1, "full": 0, "transfer": 1}[strategy]
    assert first == {"w": 0.0, "age": float(age)}


def test_strategy_reuse_serves_a_stored_version_and_fine_tunes_when_none_is_back(
    make_controller: MakeController,
) -> None:
    # 0 -> 0.6 (nothing stored is back: fine-tune) -> 0 (v1 is back: served again). Reuse is
    # the strategy, so reuse_stored=false does not turn it off.
    c = np.array([[0, 0, 0.6, 0.6, 0]] * SITES, dtype=float)
    controller, federation = make_controller(
        c,
        retrain={"strategy": "reuse", "reuse_stored": False},
        federation=FakeFederation(c, step=1.0),
    )
    controller.run()
    v1, v2 = versions(controller.run_dir)
    assert v2.trigger == "warm"
    assert champion(controller.run_dir)[0] == 1
    assert ("train", 4) not in federation.calls
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert timeline["action"].iloc[4] == "reuse v1"


def test_auto_reuses_before_it_runs_a_tournament(make_controller: MakeController) -> None:
    c = np.array([[0, 0, 0.6, 0.6, 0]] * SITES, dtype=float)
    controller, federation = make_controller(
        c, retrain={"candidates": ["incremental", "full"]}, federation=FakeFederation(c, step=1.0)
    )
    controller.run()
    assert [v.trigger for v in versions(controller.run_dir)] == ["initial", "warm", "full"]
    assert ("train", 4) not in federation.calls
    assert pd.read_csv(controller.run_dir / "timeline.csv")["action"].iloc[4] == "reuse v1"


def test_the_anchor_is_the_champion_and_pulls_an_incremental_retrain_towards_it(
    make_controller: MakeController,
) -> None:
    # θ moves 0 -> 0.3 with the champion at 0: with mu = 1 the sites' optimum is 0.15, so the
    # retrain ends at 0.15 (accuracy 0.85 where it would reach 1 unanchored).
    c = shift(2, 3, after=0.3)
    federation = FakeFederation(c, step=1.0, anchor_mu=1.0)
    controller, _ = make_controller(
        c,
        retrain={"anchor_mu": 1.0, "candidates": ["incremental", "full"], "reinit_after": None},
        federation=federation,
    )
    controller._lagged = False  # the per-call lists below are two waves' (one wave adds
    # the rounds it trains ahead of a stop and drops: test_controller_one_wave)
    controller.run()
    v1, incremental, full = versions(controller.run_dir)
    assert federation.anchors[: v1.rounds] == [None] * v1.rounds  # the first model: no anchor
    assert federation.anchors[v1.rounds : v1.rounds + incremental.rounds] == [0.0] * (
        incremental.rounds
    )
    assert federation.anchors[v1.rounds + incremental.rounds :] == [None] * full.rounds
    assert incremental.metrics["validation_accuracy"] == pytest.approx(0.85)
    assert full.metrics["validation_accuracy"] == 1.0 and full.status is Status.champion


@pytest.mark.parametrize("lives", [(5, 7, 3), (9, 4)])
def test_a_tournament_killed_again_and_again_ends_as_an_uninterrupted_one(
    make_controller: MakeController, tmp_path: Path, lives: tuple[int, ...]
) -> None:
    c = np.array([[0, 0, 2.0, 2.0, 0.3, 0.3]] * SITES, dtype=float)
    retrain = {**TOURNAMENT, "max_rounds": 4, "reuse_stored": False}
    whole, _ = make_controller(
        c, retrain=retrain, run_dir=tmp_path / "whole", federation=FakeFederation(c, step=0.1)
    )
    whole.run()
    assert len(versions(tmp_path / "whole")) == 7  # the initial model and two tournaments

    def life(resume: bool, crash_after: int) -> Controller:
        return make_controller(
            c,
            retrain=retrain,
            run_dir=tmp_path / "killed",
            resume=resume,
            federation=FakeFederation(c, step=0.1, crash_after=crash_after),
        )[0]

    assert run_killed(life, lives, limit=200) >= 7
    assert fingerprint(tmp_path / "killed") == fingerprint(tmp_path / "whole")


def test_a_warm_start_that_stalls_and_re_initialises_drops_the_anchor(
    make_controller: MakeController, tmp_path: Path
) -> None:
    """Under auto's lone incremental candidate, a stalled warm start re-initialises; the
    fresh weights are not pulled towards the champion they replace. Killed and resumed after
    the switch, the run drops the anchor too."""
    c = shift(2, 3, after=2.0)  # warm weights move 0.1 a round and stall below the champion
    retrain = {"anchor_mu": 1.0, "reinit_after": 2, "stall_gap": 0.05, "patience": 2}
    federation = FakeFederation(c, step=0.1, anchor_mu=1.0)
    controller, _ = make_controller(c, retrain=retrain, federation=federation)
    controller._lagged = False  # the per-call lists below are two waves' (one wave adds
    # the rounds it trains ahead of a stop and drops: test_controller_one_wave)
    controller.run()
    v1, v2 = versions(controller.run_dir)
    assert v2.trigger == "reinit"
    anchors = federation.anchors[v1.rounds :]
    assert anchors == [0.0, 0.0] + [None] * (v2.rounds - 2)
    assert v2.metrics["validation_accuracy"] == 1.0  # unanchored, fresh weights reach θ

    def life(resume: bool, crash_after: int) -> Controller:
        return make_controller(
            c,
            retrain=retrain,
            run_dir=tmp_path / "killed",
            resume=resume,
            federation=FakeFederation(c, step=0.1, anchor_mu=1.0, crash_after=crash_after),
        )[0]

    assert run_killed(life, (3, 4, 5, 6), limit=100) >= 3
    assert fingerprint(tmp_path / "killed") == fingerprint(controller.run_dir)

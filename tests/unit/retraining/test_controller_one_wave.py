"""A scenario's plateau search in one message wave per round (issue 15, item 2).

The oracle is the same run in two waves a round (``controller._lagged = False``: a train wave,
then an evaluate wave whose validation decides the round). In one wave, round k's validation
comes with round k+1's train replies, and round k+1 is dropped where the search stops or
re-initialises at k. Every kept round must be the round two waves train, so the runs must
decide and produce the same (versions, rows, decisions, served weights), with fewer waves.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FakeFederation, MakeController, config, run_killed, versions
from omegaconf import OmegaConf
from test_controller_resume import CONCEPTS, RELEASE, RETRAIN, fingerprint

from fedretrain.privacy.config import PrivacyConfig
from fedretrain.retraining.controller import Controller, one_wave_search

SITES = 4


def shift(at: int, periods: int, after: float) -> np.ndarray:
    return np.array([[0.0] * at + [after] * (periods - at)] * SITES)


# name -> (concepts, retrain settings, federation settings)
RUNS: dict[str, tuple[np.ndarray, dict[str, Any], dict[str, Any]]] = {
    "patience": (shift(2, 4, after=0.6), {"patience": 2}, {"step": 0.1}),
    "reinit": (
        shift(2, 4, after=2.0),
        {"reinit_after": 2, "stall_gap": 0.05, "patience": 2},
        {"step": 0.1},
    ),
    "cap": (shift(1, 3, after=3.0), {"max_rounds": 3, "reinit_after": None}, {"step": 0.1}),
    "tournament": (
        shift(2, 3, after=2.0),
        {"candidates": ["incremental", "full", "transfer"], "reinit_after": None},
        {"step": 0.1},
    ),
    "anchor": (shift(2, 4, after=0.5), {"anchor_mu": 1.0}, {"step": 0.1, "anchor_mu": 1.0}),
    "full": (shift(2, 4, after=1.5), {"strategy": "full", "buffer_periods": 2}, {"step": 0.1}),
}


def run(
    make_controller: MakeController, tmp_path: Path, name: str, lagged: bool, **extra: Any
) -> tuple[Controller, FakeFederation]:
    concepts, retrain, fake = RUNS[name]
    controller, federation = make_controller(
        concepts,
        retrain=retrain,
        run_dir=tmp_path / f"{name}-{lagged}",
        federation=FakeFederation(concepts, **fake, **extra),
    )
    assert controller._lagged  # the fake's config allows one wave
    controller._lagged = lagged
    controller.run()
    return controller, federation


@pytest.mark.parametrize("name", sorted(RUNS))
def test_one_wave_decides_and_produces_what_two_waves_do_with_fewer_waves(
    make_controller: MakeController, tmp_path: Path, name: str
) -> None:
    two, two_calls = run(make_controller, tmp_path, name, lagged=False)
    one, one_calls = run(make_controller, tmp_path, name, lagged=True)
    assert fingerprint(one.run_dir) == fingerprint(two.run_dir)
    trained = versions(one.run_dir)  # each a plateau search, the initial model's too
    rounds = sum(v.rounds for v in trained)
    assert rounds > len(trained)
    waves = {c: len(f.calls) for c, f in (("one", one_calls), ("two", two_calls))}
    # Each round's evaluate wave goes; a search pays one wave back (the round trained ahead
    # of its stop, or the cap's evaluation), and its first round and each re-initialisation
    # have nothing to evaluate.
    saved = waves["two"] - waves["one"]
    reinits = sum(v.trigger == "reinit" for v in trained)
    assert rounds - 2 * len(trained) - reinits <= saved <= rounds
    assert saved > 0
    evaluations = [c for c in one_calls.calls if c[0] == "evaluate"]
    assert len(evaluations) < len([c for c in two_calls.calls if c[0] == "evaluate"])


def test_the_rules_scenario_decides_the_same_in_one_wave(
    make_controller: MakeController, tmp_path: Path
) -> None:
    """The resume tests' scenario, which takes every rule (gate, canary, rollback, reinit)."""
    outcomes = []
    for lagged in (False, True):
        controller, _ = make_controller(
            CONCEPTS,
            retrain=RETRAIN,
            release=RELEASE,
            run_dir=tmp_path / f"rules-{lagged}",
            federation=FakeFederation(CONCEPTS, step=0.1),
        )
        assert controller._lagged  # the fake's config allows one wave
        controller._lagged = lagged
        controller.run()
        outcomes.append(fingerprint(controller.run_dir))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("lives", [(4, 6, 3), (7, 2, 9)])
@pytest.mark.parametrize("name", ["reinit", "tournament"])
def test_one_wave_killed_again_and_again_ends_as_an_uninterrupted_run(
    make_controller: MakeController, tmp_path: Path, name: str, lives: tuple[int, ...]
) -> None:
    whole, _ = run(make_controller, tmp_path, name, lagged=True)
    concepts, retrain, fake = RUNS[name]

    def life(resume: bool, crash_after: int) -> Controller:
        controller = make_controller(
            concepts,
            retrain=retrain,
            run_dir=tmp_path / "killed",
            resume=resume,
            federation=FakeFederation(concepts, **fake, crash_after=crash_after),
        )[0]
        assert controller._lagged
        return controller

    assert run_killed(life, lives, limit=200) >= 3
    assert fingerprint(tmp_path / "killed") == fingerprint(whole.run_dir)


def test_dp_sgd_a_server_optimizer_and_different_samples_keep_two_waves() -> None:
    cfg = config(3, SITES)
    assert one_wave_search(cfg)
    dp = replace(cfg, privacy=PrivacyConfig(enabled=True, noise_multiplier=1.0))
    adam = replace(cfg, strategy=OmegaConf.create({"_target_": "flwr.serverapp.strategy.FedAdam"}))
    fewer = replace(cfg, runtime=replace(cfg.runtime, fraction_evaluate=0.5))
    dropout = replace(cfg, attack=replace(cfg.attack, dropout=0.1))
    assert not any(one_wave_search(c) for c in (dp, adam, fewer, dropout))

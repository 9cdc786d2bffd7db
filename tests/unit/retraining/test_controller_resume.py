"""A run killed at any request and resumed ends as the uninterrupted run would.

The fake federation raises :class:`Crash` at a chosen request (as SIGKILL would stop the server
between two messages); a new controller then resumes from the folder, with no state but the
files. Every life is cut short again until the run completes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    Crash,
    FakeFederation,
    MakeController,
    champion,
    events,
    run_killed,
    versions,
)

from fedretrain.errors import FederationError
from fedretrain.monitor.binomial_error import BinomialErrorTest
from fedretrain.privacy import PrivacyLedger, SampledGaussian
from fedretrain.retraining.controller import Controller

SITES = 10
# A shift, a return and a split: reinit, warm, canary, promotion, watch, rollback and a gate
# rejection all happen (test_the_scenario_exercises_every_rule).
CONCEPTS = np.array([[0, 0, 0.3, 0.3, 0, 0, 2.0, 2.0]] * 5 + [[0, 0, 0.3, 0.3, 0, 0, 0, 0]] * 5)
RETRAIN = {"reinit_after": 2, "patience": 2, "max_rounds": 6}
RELEASE = {"canary_fraction": 0.3, "canary_periods": 1, "watch_periods": 1}


def fingerprint(run_dir: Path) -> dict[str, object]:
    """What a run decided and produced, without wall-clock times."""
    # As text, so that NaN equals NaN.
    timeline = pd.read_csv(run_dir / "timeline.csv").drop(columns="seconds").astype(str)
    metrics = pd.read_csv(run_dir / "metrics.csv").drop(columns="seconds").astype(str)
    serving, weights = champion(run_dir)
    return {
        "timeline": timeline.to_dict("records"),
        "metrics": metrics.to_dict("records"),
        "decisions": (run_dir / "decisions.jsonl").read_text(),
        "versions": [
            (v.version, v.status, v.parent, v.trigger, v.period, v.rounds, v.metrics)
            for v in versions(run_dir)
        ],
        "events": [(e.kind, e.version, e.period, e.key) for e in events(run_dir)],
        "serving": (serving, {k: v.tolist() for k, v in weights.items()}),
    }


def test_the_scenario_exercises_every_rule(make_controller: MakeController) -> None:
    controller, _ = make_controller(
        CONCEPTS, retrain=RETRAIN, release=RELEASE, federation=FakeFederation(CONCEPTS, step=0.1)
    )
    controller.run()
    run = fingerprint(controller.run_dir)
    kinds = {kind for kind, *_ in run["events"]}  # type: ignore[attr-defined]
    assert {"gate", "canary", "promote", "watch", "rollback", "reject"} <= kinds
    actions = {row["action"] for row in run["timeline"]}  # type: ignore[attr-defined]
    assert {"initial", "reinit", "warm", "warm, rejected", "serve"} <= actions


@pytest.mark.parametrize("lives", [(3, 5, 4), (6, 2, 8, 5)])
def test_killed_again_and_again_the_run_ends_as_an_uninterrupted_one(
    make_controller: MakeController, tmp_path: Path, lives: tuple[int, ...]
) -> None:
    whole, _ = make_controller(
        CONCEPTS,
        retrain=RETRAIN,
        release=RELEASE,
        run_dir=tmp_path / "whole",
        federation=FakeFederation(CONCEPTS, step=0.1),
    )
    whole.run()

    killed = tmp_path / "killed"

    def life(resume: bool, crash_after: int) -> Controller:
        return make_controller(
            CONCEPTS,
            retrain=RETRAIN,
            release=RELEASE,
            run_dir=killed,
            resume=resume,
            federation=FakeFederation(CONCEPTS, step=0.1, crash_after=crash_after),
        )[0]

    assert run_killed(life, lives, limit=200) >= 7
    assert fingerprint(killed) == fingerprint(tmp_path / "whole")


def test_a_resumed_monitor_tests_from_the_same_seeds(
    make_controller: MakeController, tmp_path: Path
) -> None:
    # Each promotion seeds the monitor with the new champion's holdout scores; a resumed run
    # replays those seeds, so its detections after the kill match the uninterrupted run's.
    def build(run_dir: Path, resume: bool = False, crash_after: int | None = None):  # noqa: ANN202
        return make_controller(
            CONCEPTS,
            retrain=RETRAIN,
            release={"canary_fraction": 0.0, "watch_periods": 0},
            run_dir=run_dir,
            resume=resume,
            federation=FakeFederation(CONCEPTS, step=0.1, crash_after=crash_after),
            detectors=[BinomialErrorTest(arl=5000, reference_periods=2)],
        )[0]

    build(tmp_path / "whole").run()
    whole = fingerprint(tmp_path / "whole")
    tested = [d for d in str(whole["decisions"]).splitlines() if '"sites_tested": 10' in d]
    assert len(tested) == len(CONCEPTS[0]) - 1  # every period after the first is tested
    # One message wave per round: request 16 asks period 4's statistics (after the seeds of
    # periods 0 and 2), request 24 is inside period 6's retrain.
    for crash_after in (16, 24):
        killed = build(tmp_path / f"killed{crash_after}", crash_after=crash_after)
        with pytest.raises(Crash):
            killed.run()
        killed.registry.close()
        build(tmp_path / f"killed{crash_after}", resume=True).run()
        assert fingerprint(tmp_path / f"killed{crash_after}") == whole


def _crashed_run(make_controller: MakeController, run_dir: Path) -> None:
    controller, _ = make_controller(
        CONCEPTS,
        retrain=RETRAIN,
        release=RELEASE,
        run_dir=run_dir,
        federation=FakeFederation(CONCEPTS, step=0.1, crash_after=31),  # period 6's retrain
    )
    with pytest.raises(Crash):
        controller.run()
    controller.registry.close()


def test_a_corrupt_model_file_stops_the_resume_before_any_site_is_asked(
    make_controller: MakeController, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _crashed_run(make_controller, run_dir)
    model = run_dir / versions(run_dir)[0].file
    damaged = bytearray(model.read_bytes())
    damaged[-1] ^= 0xFF
    model.write_bytes(bytes(damaged))
    federation = FakeFederation(CONCEPTS, step=0.1)
    with pytest.raises(FederationError, match=r"cannot be resumed, and nothing was changed.*v1"):
        make_controller(CONCEPTS, run_dir=run_dir, resume=True, federation=federation)
    assert federation.calls == []


def test_a_registry_cut_short_is_left_as_it_was(
    make_controller: MakeController, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _crashed_run(make_controller, run_dir)
    registry = run_dir / "registry.sqlite"
    for side in ("registry.sqlite-wal", "registry.sqlite-shm"):
        (run_dir / side).unlink(missing_ok=True)  # the write-ahead log was lost
    registry.write_bytes(registry.read_bytes()[:100])  # less than one page survived
    before = registry.read_bytes()
    with pytest.raises(FederationError, match="the registry cannot be read"):
        make_controller(CONCEPTS, run_dir=run_dir, resume=True)
    assert registry.read_bytes() == before


def test_a_damaged_ledger_or_checkpoint_stops_the_resume_before_any_site_is_asked(
    make_controller: MakeController, tmp_path: Path
) -> None:
    # Issue 18, item 3: every check before any request, and nothing written.
    run_dir = tmp_path / "run"
    _crashed_run(make_controller, run_dir)
    ledger = PrivacyLedger.open(run_dir / "privacy" / "site-3.json", 3)
    ledger.record("round 1", SampledGaussian(1.0, 0.05, 20), 1e-5)
    ledger_text = ledger.path.read_text()  # type: ignore[union-attr]
    ledger.path.write_text(ledger_text.replace('"steps": 20', '"steps": 2'))  # type: ignore[union-attr]
    state = run_dir / "checkpoint" / "state.json"
    state.write_text(state.read_text().replace('"version": 2', '"version": 99', 1))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    federation = FakeFederation(CONCEPTS, step=0.1)
    with pytest.raises(FederationError) as info:
        make_controller(CONCEPTS, run_dir=run_dir, resume=True, federation=federation)
    message = str(info.value)
    assert "cannot be resumed, and nothing was changed" in message
    assert "privacy ledger:" in message and "site-3.json" in message and "checksum" in message
    assert "checkpoint:" in message and "newer fedretrain" in message
    assert federation.calls == []
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "release",
    [RELEASE, {"canary_fraction": 0.0, "watch_periods": 1}],
    ids=["canary", "promote-and-watch"],
)
@pytest.mark.parametrize("period", range(len(CONCEPTS[0])))
def test_killed_after_a_period_s_decisions_before_its_checkpoint(
    make_controller: MakeController, tmp_path: Path, period: int, release: dict[str, object]
) -> None:
    # The registry has recorded the period's gate, promotion, canary, watch or rollback, but
    # the checkpoint still says the period is under way: the resumed run must take the
    # recorded decisions, not decide again against a champion that has since changed, and
    # seed its monitor as the uninterrupted run did.
    def build(run_dir: Path, resume: bool = False):  # noqa: ANN202
        return make_controller(
            CONCEPTS,
            retrain=RETRAIN,
            release=release,
            run_dir=run_dir,
            resume=resume,
            federation=FakeFederation(CONCEPTS, step=0.1),
            detectors=[BinomialErrorTest(arl=5000, reference_periods=2)],
        )[0]

    build(tmp_path / "whole").run()
    killed = build(tmp_path / "killed")
    complete = killed._complete

    def crash(p: int) -> None:
        if p == period:
            raise Crash(f"killed before period {p}'s checkpoint")
        complete(p)

    killed._complete = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        killed.run()
    killed.registry.close()
    build(tmp_path / "killed", resume=True).run()
    assert fingerprint(tmp_path / "killed") == fingerprint(tmp_path / "whole")

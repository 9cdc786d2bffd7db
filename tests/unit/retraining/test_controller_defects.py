"""Defects of the single-model loop seen on staggered drift (issue 14), each pinned here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from conftest import MakeController, champion, events, versions

from fedretrain.monitor.base import Detection, Detector
from fedretrain.monitor.binomial_error import BinomialErrorTest
from fedretrain.monitor.stats import PeriodStats
from fedretrain.registry import Status


class CountingDetector(Detector):
    """Never alarms; counts how often the monitor made it forget its reference."""

    def __init__(self) -> None:
        self.resets = 0

    def update(self, stats: PeriodStats) -> None:
        pass

    @property
    def last(self) -> Detection:
        return Detection.quiet("counting", "never alarms")

    def reset(self) -> None:
        self.resets += 1

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def test_a_stored_version_that_fails_the_gate_is_recorded_and_the_run_goes_on(
    make_controller: MakeController,
) -> None:
    # v1 serves θ=0, v2 θ=0.6. At period 3 seven sites are back at 0: v1 wins overall (reuse)
    # but loses 0.6 at the other three, more than site_margin. Before the fix the gate's
    # refusal tried to reject the retired v1 and the run died with a RegistryError.
    concepts = np.array([[0, 0, 0.6, 0.0]] * 7 + [[0, 0, 0.6, 0.6]] * 3)
    controller, federation = make_controller(
        concepts,
        retrain={"reuse_tolerance": 0.5},
        release={"site_margin": 0.05, "watch_periods": 0},
    )
    federation.step = 1.0
    controller.run()
    [refused] = [e for e in events(controller.run_dir, "gate") if e.version == 1]
    assert (refused.period, refused.key, refused.payload["promote"]) == (3, "p3-reuse-gate", False)
    v1, v2, v3 = versions(controller.run_dir)
    assert v1.status is Status.retired  # refused, not rejected: it served before
    assert v3.period == 3 and v3.parent == 2  # the retrain went on to train instead
    assert ("train", 3) in federation.calls


def test_a_rejected_candidate_is_never_offered_for_reuse(make_controller: MakeController) -> None:
    # Period 2: half the sites move to 0.4; the candidate (w=0.2) is rejected at the gate.
    # Period 3: every site is at 0.2, where that rejected model would score 100%.
    concepts = np.array([[0, 0, 0.4, 0.2]] * 5 + [[0, 0, 0.0, 0.2]] * 5)
    controller, federation = make_controller(concepts, release={"site_margin": 0.1})
    federation.step = 1.0
    controller.run()
    v1, v2, v3 = versions(controller.run_dir)
    assert v2.status is Status.rejected
    timeline = pd.read_csv(controller.run_dir / "timeline.csv")
    assert not str(timeline["action"].iloc[3]).startswith("reuse")
    assert champion(controller.run_dir)[0] == 3


def test_the_monitor_keeps_its_reference_when_the_gate_rejects_the_candidate(
    make_controller: MakeController,
) -> None:
    concepts = np.array([[0, 0, 0.4, 0.4]] * 5 + [[0, 0, 0.0, 0.0]] * 5)
    detector = CountingDetector()
    controller, federation = make_controller(
        concepts, release={"site_margin": 0.1}, detectors=[detector]
    )
    federation.step = 1.0
    controller.run()
    assert versions(controller.run_dir)[1].status is Status.rejected
    assert detector.resets == 1  # after the initial training only: the champion never changed


def test_the_monitor_starts_afresh_when_the_serving_model_changes(
    make_controller: MakeController,
) -> None:
    concepts = np.array([[0, 0, 0.3, 0.3]] * 10)
    detector = CountingDetector()
    controller, federation = make_controller(concepts, detectors=[detector])
    federation.step = 1.0
    controller.run()
    assert champion(controller.run_dir)[0] == 2
    assert detector.resets == 2


def _detections(run_dir: Path, test: str) -> dict[int, dict[str, Any]]:
    """Each period's decision of the detector named ``test``, from decisions.jsonl."""
    out = {}
    for line in (run_dir / "decisions.jsonl").read_text().splitlines():
        record = json.loads(line)
        for detection in record.get("detectors", []):
            if detection["test"] == test:
                out[record["period"]] = detection
    return out


def test_drift_in_the_period_right_after_a_retrain_is_detected(
    make_controller: MakeController,
) -> None:
    # The oracle retrains at period 2 (every site moves to 0.5); at period 3 they move back.
    # Before the fix periods 3 and 4 only formed the new reference: the served model lost
    # half its accuracy at period 3 and nothing could see it.
    concepts = np.array([[0, 0, 0.5, 0.0, 0.0]] * 10)
    controller, federation = make_controller(
        concepts, points=[2], detectors=[BinomialErrorTest(arl=5000, reference_periods=2)]
    )
    federation.step = 1.0
    controller.run()
    found = _detections(controller.run_dir, BinomialErrorTest.TEST)
    assert found[3]["drifted"], found[3]["reason"]
    # Against the retrain's validation: the served model was 100% right on period 2's holdouts.
    assert found[3]["detail"]["reference_error"] == 0.0
    assert found[3]["detail"]["error"] == 0.5
    # Period 1 follows the initial training, seeded the same way: tested, and quiet.
    assert found[1]["statistic"] is not None and not found[1]["drifted"]


def test_the_period_right_after_a_retrain_is_tested_and_quiet_when_nothing_changed(
    make_controller: MakeController,
) -> None:
    concepts = np.array([[0, 0, 0.5, 0.5, 0.5]] * 10)
    controller, federation = make_controller(
        concepts, points=[2], detectors=[BinomialErrorTest(arl=5000, reference_periods=2)]
    )
    federation.step = 1.0
    controller.run()
    found = _detections(controller.run_dir, BinomialErrorTest.TEST)
    assert found[3]["reason"].startswith("no drift"), found[3]["reason"]
    assert found[3]["detail"]["sites_tested"] == 10


def test_detection_is_scored_site_by_site_on_a_staggered_schedule(
    make_controller: MakeController,
) -> None:
    # Sites 0-4 move at period 2, sites 5-9 at period 4; the oracle retrains only at 2.
    # Scored by retrains over "any site changed" the change at 4 is missed; the monitor named
    # sites 5-9 at period 4 (and no one else), which per site is a detection with delay 0.
    concepts = np.array([[0, 0, 0.5, 0.5, 0.5]] * 5 + [[0, 0, 0, 0, -0.5]] * 5)
    truth = {s: [(2, 1)] for s in range(5)} | {s: [(4, 2)] for s in range(5, 10)}
    controller, federation = make_controller(
        concepts,
        points=[2],
        detectors=[BinomialErrorTest(arl=5000, reference_periods=2)],
        site_changes=truth,
    )
    federation.step = 1.0
    summary = controller.run()
    assert summary["change_points"] == [2] and summary["missed_changes"] == 0
    timeline = pd.read_csv(controller.run_dir / "timeline.csv", dtype={"alarm_sites": str})
    assert list(timeline["alarm_sites"].fillna("")) == ["", "", "0;1;2;3;4", "", "5;6;7;8;9"]
    assert summary["site_detection"] == {
        "changes": 10,
        "detected": 10,
        "missed": 0,
        "false_alarms": 0,
        "mean_delay": 0.0,
        "by_concept": {
            "1": {"changes": 5, "detected": 5, "mean_delay": 0.0},
            "2": {"changes": 5, "detected": 5, "mean_delay": 0.0},
        },
    }
    assert summary["site_detection_by_site"]["7"] == {"delays": [0], "false_alarms": 0}
    saved = json.loads((controller.run_dir / "summary.json").read_text())
    assert saved["site_detection"] == summary["site_detection"]


def test_a_retrain_tells_the_federation_which_sites_drifted(
    make_controller: MakeController,
) -> None:
    concepts = np.array([[0, 0, 0.5, 0.5]] * 3 + [[0, 0, 0, 0]] * 7)
    controller, federation = make_controller(
        concepts, detectors=[BinomialErrorTest(arl=5000, reference_periods=2)]
    )
    federation.step = 1.0
    controller.run()
    rounds = sorted(federation.drifted.items())
    assert rounds[0][1] == frozenset()  # the initial training
    assert rounds[-1][1] == frozenset({0, 1, 2})  # the retrain at period 2

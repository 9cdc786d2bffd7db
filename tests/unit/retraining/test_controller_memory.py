"""Knowledge preservation (issue 17, item 3) through the retraining core on the numpy
federation: the gate scores candidate and champion on earlier periods' holdouts (backward
transfer, by hand from the concepts: accuracy is 1 - |w - θ|), refuses a candidate that
forgets more than ``release.forgetting_margin``, and a retrain with rehearsal trains on a
bounded replay buffer of earlier windows and forgets less."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import MakeController, events, versions

from fedretrain.registry import Status, gate

SITES = 4
# θ = 0 for periods 0..2, then 0.4: the oracle retrains at period 3.
CONCEPTS = np.array([[0, 0, 0, 0.4, 0.4, 0.4]] * SITES)


def test_the_gate_refuses_a_candidate_that_forgets_more_than_the_margin() -> None:
    now = {0: (90, 100)}, {0: (60, 100)}  # better on current data
    earlier = {0: (60, 100)}, {0: (100, 100)}  # much worse on the earlier holdouts
    refused = gate(*now, 0.0, 1.0, candidate_memory=earlier[0], champion_memory=earlier[1],
                   forgetting_margin=0.1)  # fmt: skip
    assert not refused.promote and refused.memory is not None
    assert refused.memory.delta == pytest.approx(-0.4)
    assert "forgets: 0.6000 vs the champion's 1.0000" in refused.reason
    reported = gate(*now, 0.0, 1.0, candidate_memory=earlier[0], champion_memory=earlier[1])
    assert reported.promote
    assert reported.to_dict()["memory"]["backward_transfer"] == pytest.approx(-0.4)


def retrain_at_3(make_controller: MakeController, tmp_path: Path, name: str, **kw: object):
    controller, federation = make_controller(CONCEPTS, run_dir=tmp_path / name, **kw)
    controller.run()
    gate_events = [e for e in events(tmp_path / name, "gate") if e.period == 3]
    return federation, gate_events[-1].payload, versions(tmp_path / name)


def test_a_forgetting_candidate_is_refused_and_the_earlier_holdouts_were_asked_for(
    make_controller: MakeController, tmp_path: Path
) -> None:
    federation, payload, stored = retrain_at_3(
        make_controller, tmp_path, "run",
        release={"memory_periods": 2, "forgetting_margin": 0.05},
    )  # fmt: skip
    assert (1, 2) in federation.memories  # the holdouts of the two periods before period 3
    memory = payload["memory"]
    assert memory["champion_accuracy"] == pytest.approx(1.0)  # w = 0 on θ = 0
    assert memory["backward_transfer"] < -0.05 and memory["forgets"]
    assert not payload["promote"] and "forgets" in payload["reason"]
    candidate = next(v for v in stored if v.period == 3)
    assert candidate.status is Status.rejected


def test_without_a_margin_backward_transfer_is_reported_and_the_candidate_serves(
    make_controller: MakeController, tmp_path: Path
) -> None:
    _, payload, stored = retrain_at_3(
        make_controller, tmp_path, "run", release={"memory_periods": 2}
    )
    assert payload["promote"] and payload["memory"]["backward_transfer"] < 0
    assert next(v for v in stored if v.period == 3).status in (Status.champion, Status.retired)


def test_rehearsal_trains_on_a_bounded_buffer_and_forgets_less(
    make_controller: MakeController, tmp_path: Path
) -> None:
    plain, plain_gate, _ = retrain_at_3(
        make_controller, tmp_path, "plain", release={"memory_periods": 2}
    )
    rehearsed, gate_3, _ = retrain_at_3(
        make_controller, tmp_path, "rehearsed",
        release={"memory_periods": 2}, retrain={"rehearsal_periods": 2},
    )  # fmt: skip
    at_3 = [since for since in rehearsed.since if since]
    assert at_3 and all(since == {s: 1 for s in range(SITES)} for since in at_3[:1])
    assert not any(plain.since)  # no rehearsal: each round trains on its period's window
    # The buffer of periods 1..3 pulls w towards mean θ = 0.4 / 3: less forgotten.
    forgot = plain_gate["memory"]["backward_transfer"]
    assert gate_3["memory"]["backward_transfer"] > forgot + 0.1
    assert gate_3["promote"]

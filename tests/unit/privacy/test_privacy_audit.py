"""The server's own privacy account (issue 18, item 5) across a resume, and ledgers that carry
a checksum that catches damage. The account on real Flower replies: tests/unit/flower."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from oracles import dp_accounting_epsilon

from fedretrain.privacy import LedgerFormatError, PrivacyLedger, SampledGaussian
from fedretrain.privacy.tracking import EpsilonReport, EpsilonTracker

DELTA = 1e-5
ASKED = SampledGaussian(noise_multiplier=1.0, sample_rate=0.04, steps=25)
EXAMPLES = 800


def test_a_reply_that_does_not_say_what_it_ran_is_rejected() -> None:
    tracker = EpsilonTracker(None, DELTA)
    problem = tracker.audit(EpsilonReport(1, 0.3, 0.3, None, EXAMPLES), ASKED)
    assert problem is not None and "does not say what DP-SGD ran" in problem


def test_the_account_survives_a_resume_and_an_old_privacy_csv_gets_the_new_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "privacy.csv"
    # Written before the mechanism columns: round 1, site 1.
    path.write_text("server_round,period,site,epsilon_spent,epsilon\n1,,1,0.5,0.5\n")
    tracker = EpsilonTracker(path, DELTA)
    tracker.restore(1)
    assert tracker.account(1) == 0.0  # nothing known of what round 1 ran: no floor from it
    tracker.observe(2, None, [EpsilonReport(1, 0.2, 0.7, ASKED, EXAMPLES)])
    again = EpsilonTracker(path, DELTA)
    again.restore(2)
    assert [r.server_round for r in again.rows] == [1, 2]
    assert again.account(1) == pytest.approx(dp_accounting_epsilon([ASKED], DELTA), rel=1e-3)
    assert math.isnan(again.rows[0].noise_multiplier) and again.rows[1].steps == 25


def test_a_damaged_ledger_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "site-0.json"
    ledger = PrivacyLedger(0, path)
    ledger.record("round 1", ASKED, DELTA)
    ledger.record("round 2", ASKED, DELTA)
    state = json.loads(path.read_text())
    assert state["version"] == 2 and state["checksum"].startswith("sha256:")
    # A self-consistent edit of the entries and the composition (one round fewer) that the
    # composition check alone lets through:
    state["entries"] = state["entries"][:1]
    state["composition"] = [{**state["composition"][0], "steps": 25}]
    damaged = json.dumps(state)
    path.write_text(damaged)
    with pytest.raises(LedgerFormatError, match="checksum does not match"):
        PrivacyLedger.open(path, 0)
    assert path.read_text() == damaged


def test_a_version_1_ledger_loads_and_gains_a_checksum_when_saved(tmp_path: Path) -> None:
    path = tmp_path / "site-0.json"
    ledger = PrivacyLedger(0, path)
    ledger.record("round 1", ASKED, DELTA)
    state = json.loads(path.read_text())
    del state["checksum"]
    path.write_text(json.dumps({**state, "version": 1}))
    old = PrivacyLedger.open(path, 0)
    assert old.epsilon(DELTA) == ledger.epsilon(DELTA)
    old.record("round 2", ASKED, DELTA)
    assert json.loads(path.read_text())["checksum"].startswith("sha256:")

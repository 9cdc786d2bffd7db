"""The server's own privacy account on real Flower replies (issue 18, item 5): a DP-SGD reply
whose site ran something else than it was asked, or reports less ε than this run alone cost
it, is rejected and recorded while the round goes on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from oracles import dp_accounting_epsilon

from fedretrain.flower.federation import trained_replies
from fedretrain.flower.records import epsilon_metrics
from fedretrain.privacy import PrivacyLedger, SampledGaussian
from fedretrain.privacy.tracking import EpsilonTracker
from fedretrain.report import RunReport
from fedretrain.validation import AUDIT_PHASE

DELTA = 1e-5
ASKED = SampledGaussian(noise_multiplier=1.0, sample_rate=0.04, steps=25)
EXAMPLES = 800


def _site_reply(node: int, ledger: PrivacyLedger, ran: SampledGaussian) -> Message:
    """A DP-SGD site's train reply after recording ``ran`` in its ledger, as clients/app.py
    builds it."""
    before = ledger.epsilon(DELTA)
    ledger.record(f"round {node}", ran, DELTA)
    after = ledger.epsilon(DELTA)
    metrics = MetricRecord(
        {
            "num-examples": EXAMPLES,
            "train-loss": 0.5,
            **epsilon_metrics(int(ledger.site), after - before, after, ran),
        }
    )
    arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    TaskIdentity.node_id = node  # a message takes its source from the process's identity
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def _round(
    tracker: EpsilonTracker, report: RunReport, server_round: int, replies: list[Message]
) -> list[int]:
    kept = trained_replies(replies, report, server_round, tracker, asked=lambda n: ASKED)
    return sorted(int(r.metadata.src_node_id) for r in kept)


def test_honest_sites_pass_and_the_account_equals_an_independent_accountant(
    tmp_path: Path,
) -> None:
    tracker, report = EpsilonTracker(None, DELTA), RunReport(tmp_path, 3)
    ledgers = {s: PrivacyLedger(s) for s in (1, 2)}
    for server_round in (1, 2, 3):
        replies = [_site_reply(s, ledgers[s], ASKED) for s in (1, 2)]
        assert _round(tracker, report, server_round, replies) == [1, 2]
    assert report.rejections == []
    oracle = dp_accounting_epsilon([ASKED] * 3, DELTA)
    assert tracker.account(1) == pytest.approx(oracle, rel=1e-3)
    assert tracker.latest[1] == pytest.approx(ledgers[1].epsilon(DELTA))


def test_a_ledger_reset_mid_run_is_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    tracker, report = EpsilonTracker(None, DELTA), RunReport(tmp_path, 3)
    ledgers = {s: PrivacyLedger(s) for s in (1, 2)}
    for server_round in (1, 2):
        _round(tracker, report, server_round, [_site_reply(s, ledgers[s], ASKED) for s in (1, 2)])
    ledgers[2] = PrivacyLedger(2)  # the file was deleted: a fresh budget
    kept = _round(tracker, report, 3, [_site_reply(s, ledgers[s], ASKED) for s in (1, 2)])
    assert kept == [1]
    [rejection] = report.rejections
    assert (rejection.server_round, rejection.phase, rejection.node_id) == (3, AUDIT_PHASE, 2)
    assert (
        "below the" in rejection.reason and "ledger was reset, edited or lost" in rejection.reason
    )
    floor = dp_accounting_epsilon([ASKED] * 3, DELTA)
    assert f"{floor:.3g}"[:3] in rejection.reason  # the server's own account, three rounds
    assert 2 not in {r.site for r in tracker.rows if r.server_round == 3}


def test_a_site_running_a_smaller_sigma_than_asked_is_rejected(tmp_path: Path) -> None:
    tracker, report = EpsilonTracker(None, DELTA), RunReport(tmp_path, 3)
    weaker = SampledGaussian(noise_multiplier=0.5, sample_rate=0.04, steps=25)
    kept = _round(
        tracker,
        report,
        1,
        [_site_reply(1, PrivacyLedger(1), ASKED), _site_reply(2, PrivacyLedger(2), weaker)],
    )
    assert kept == [1]
    [rejection] = report.rejections
    assert "ran σ=0.5" in rejection.reason and "asked for σ=1" in rejection.reason

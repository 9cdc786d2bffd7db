"""The server's account of what the monitoring statistics cost (issue 18, item 4): under DP-SGD
the sites' noisy statistics are checked and composed as their training is. A grid answers each
query with the real ClientApp handler (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import FakeGrid
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import monitor_handler
from fedretrain.config import compose, to_yaml
from fedretrain.errors import FederationError
from fedretrain.flower.federation import FlowerFederation, privacy_accounting
from fedretrain.flower.records import declined_reply
from fedretrain.flower.strategies import build_strategy
from fedretrain.monitor.stats import HistogramEdges
from fedretrain.preflight import to_typed
from fedretrain.privacy import PrivacyLedger
from fedretrain.privacy.tracking import STATISTICS
from fedretrain.report import RunReport
from fedretrain.site import ScenarioFederation
from fedretrain.validation import AUDIT_PHASE, DECLINED_PHASE

SITES = 3
DELTA = 1e-5


class SiteGrid(FakeGrid):
    """Nodes 1..3 are sites 0..2 running clients.app; ``change`` may alter a node's reply."""

    def __init__(self, change=None, declines: frozenset[int] = frozenset()) -> None:
        super().__init__([1, 2, 3])
        self.change = change or (lambda node, reply: reply)
        self.declines = declines

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node
            if node in self.declines:
                reply = declined_reply(message, f"site {node - 1} declines: budget")
            else:
                config = {"partition-id": node - 1, "num-partitions": SITES}
                reply = monitor_handler(message, Context(1, node, config, RecordDict(), {}))
            replies.append(self.change(node, reply))
        return replies


def _federation(tmp_path: Path, grid: SiteGrid) -> tuple[FlowerFederation, RunReport]:
    node = compose(
        [
            "privacy=dpsgd",
            "scenario=sine_flip",
            "scenario.num_periods=3",
            "scenario.schedule.at=[2]",
            f"runtime.num_clients={SITES}",
        ]
    )
    cfg = to_typed(node, build_targets=False)
    report = RunReport(tmp_path, SITES)
    ledger_dir, epsilon = privacy_accounting(cfg, tmp_path)
    federation = FlowerFederation(
        grid,
        build_strategy(cfg),
        cfg,
        to_yaml(node),
        report,
        num_features=2,
        num_classes=2,
        num_rounds=3,
        epsilon=epsilon,
        ledger_dir=ledger_dir,
    )
    return federation, report


def _weights(federation: FlowerFederation) -> dict[str, np.ndarray]:
    model = ScenarioFederation(federation.cfg, SITES).model
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


EDGES = HistogramEdges(np.tile(np.linspace(0.1, 0.9, 7), (2, 1)))


def test_the_server_composes_each_release_and_a_repeated_query_costs_nothing(
    tmp_path: Path,
) -> None:
    federation, report = _federation(tmp_path, SiteGrid())
    tracker, weights = federation.epsilon, _weights(federation)
    assert tracker is not None
    for period in (1, 2):
        collected = federation.collect_stats(period + 2, weights, period, EDGES)
        assert sorted(collected.stats.sites) == [0, 1, 2]
    collected = federation.collect_stats(4, weights, 2, EDGES)  # a resumed server asks again
    assert sorted(collected.stats.sites) == [0, 1, 2] and report.rejections == []
    rows = [r for r in tracker.rows if r.release == STATISTICS]
    assert sorted((r.site, r.period) for r in rows) == [(s, p) for s in range(3) for p in (1, 2)]
    for site in range(SITES):
        ledger = PrivacyLedger.load(tmp_path / "privacy" / f"site-{site}.json")
        assert len(ledger.entries) == 2
        assert tracker.account(site) == pytest.approx(ledger.epsilon(DELTA), rel=1e-9)
        assert tracker.latest[site] == pytest.approx(ledger.epsilon(DELTA), rel=1e-12)
    lines = (tmp_path / "privacy.csv").read_text().splitlines()
    assert lines[0].endswith(",release") and sum(STATISTICS in ln for ln in lines) == 6


def test_statistics_released_with_less_noise_than_asked_are_rejected(tmp_path: Path) -> None:
    def weaker(node: int, reply: Message) -> Message:
        if node == 2:
            reply.content.metric_records["site"]["dp-noise-multiplier"] = 0.1
        return reply

    federation, report = _federation(tmp_path, SiteGrid(weaker))
    collected = federation.collect_stats(1, _weights(federation), 1, EDGES)
    assert sorted(collected.stats.sites) == [0, 2]
    [rejection] = report.rejections
    assert (rejection.phase, rejection.node_id) == (AUDIT_PHASE, 2)
    assert "ran σ=0.1" in rejection.reason
    assert collected.rejected == 1


def test_a_declining_site_is_recorded_and_the_period_goes_on(tmp_path: Path) -> None:
    federation, report = _federation(tmp_path, SiteGrid(declines=frozenset({3})))
    collected = federation.collect_stats(1, _weights(federation), 1, EDGES)
    assert sorted(collected.stats.sites) == [0, 1]
    [rejection] = report.rejections
    assert (rejection.phase, rejection.node_id) == (DECLINED_PHASE, 3)
    everyone = _federation(tmp_path / "all", SiteGrid(declines=frozenset({1, 2, 3})))[0]
    with pytest.raises(FederationError, match="site 0 declines: budget"):
        everyone.collect_stats(1, _weights(everyone), 1, EDGES)

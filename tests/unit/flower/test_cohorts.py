"""Many sites per Flower node (issue 15, item 1): a cohort's sites compute what they would as
nodes of their own. Two grids answer with the real ClientApp handlers (no Ray): one node per
site as in plain Flower, and two worker nodes each running its cohort through ``cohort_mod``.
The same federation calls on both must give the same arrays, statistics and rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import FakeGrid
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.app import app, evaluate_handler, monitor_handler, train_handler
from clients.attack import attack_mod
from fedretrain.attacks import drops_out
from fedretrain.config import compose, to_yaml
from fedretrain.errors import FederationError
from fedretrain.flower.cohorts import (
    COHORT_KEY,
    SITE_NODE_BASE,
    CohortGrid,
    cohort_mod,
    pack,
    unpack,
)
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.records import INCOMING_EVAL_KEY, MONITOR_QUERY
from fedretrain.flower.strategies import build_strategy
from fedretrain.monitor.stats import HistogramEdges
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.site import ScenarioFederation

SITES = 5
EDGES = HistogramEdges(np.tile(np.linspace(0.1, 0.9, 7), (2, 1)))
HANDLERS = {"train": train_handler, "evaluate": evaluate_handler, MONITOR_QUERY: monitor_handler}


def _handle(message: Message, context: Context) -> Message:
    """The ClientApp below its cohort mod: the attack harness, then the handler."""
    return attack_mod(message, context, HANDLERS[message.metadata.message_type])


class SiteGrid(FakeGrid):
    """Plain Flower: nodes 11.. are sites 0.., one message each."""

    def __init__(self) -> None:
        super().__init__([11 + s for s in range(SITES)])

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            context = Context(
                1, node, {"partition-id": node - 11, "num-partitions": SITES}, RecordDict(), {}
            )
            replies.append(_handle(message, context))
        return replies


class WorkerGrid(FakeGrid):
    """Two worker nodes running cohorts; ``silent`` workers never answer (a timeout)."""

    def __init__(self, silent: frozenset[int] = frozenset(), handle=None) -> None:
        super().__init__([202, 201])
        self.silent = silent
        self.handle = handle or _handle
        self.sent: list[tuple[int, int]] = []  # (worker node, sites in its message)
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages, timeout=None):
        self.timeouts.append(timeout)
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            self.sent.append((node, len(unpack(message.content))))
            if node in self.silent:
                continue
            context = Context(1, node, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})
            replies.append(cohort_mod(message, context, self.handle))
        return replies


def _federation(tmp_path: Path, grid, *overrides: str) -> tuple[FlowerFederation, RunReport]:
    node = compose(
        [
            "scenario=sine_flip",
            "scenario.num_periods=3",
            "scenario.schedule.at=[1]",
            f"runtime.num_clients={SITES}",
            "validation.reply_timeout_s=30",
            *overrides,
        ]
    )
    cfg = to_typed(node, build_targets=False)
    report = RunReport(tmp_path, SITES)
    federation = FlowerFederation(
        grid,
        build_strategy(cfg, report.reject),
        cfg,
        to_yaml(node),
        report,
        num_features=2,
        num_classes=2,
        num_rounds=3,
    )
    return federation, report


def _weights(federation: FlowerFederation) -> dict[str, np.ndarray]:
    model = ScenarioFederation(federation.cfg, SITES).model
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _both(tmp_path: Path, *overrides: str):
    alone, alone_report = _federation(tmp_path / "alone", SiteGrid(), *overrides)
    grid = WorkerGrid()
    cohorts, cohort_report = _federation(
        tmp_path / "cohorts", CohortGrid(grid, SITES, workers=2), *overrides
    )
    return (alone, alone_report), (cohorts, cohort_report), grid


def test_a_cohort_site_trains_evaluates_and_reports_as_a_node_of_its_own(tmp_path: Path) -> None:
    (alone, _), (cohorts, report), grid = _both(tmp_path)
    weights = _weights(alone)
    for federation in (alone, cohorts):
        federation.collect_stats(0, weights, 1, EDGES)  # learns which node is which site
    a, b = alone.collect_stats(0, weights, 1, EDGES), cohorts.collect_stats(0, weights, 1, EDGES)
    assert sorted(b.stats.sites) == list(range(SITES))
    for site in range(SITES):
        assert a.stats.sites[site].to_arrays().keys() == b.stats.sites[site].to_arrays().keys()
        for key, value in a.stats.sites[site].to_arrays().items():
            np.testing.assert_array_equal(value, b.stats.sites[site].to_arrays()[key])
    ta, tb = alone.train_round(1, weights, 1), cohorts.train_round(1, weights, 1)
    assert tb.sites == SITES and ta.examples == tb.examples
    for key in weights:
        np.testing.assert_array_equal(ta.weights[key], tb.weights[key])  # bit for bit
    assert ta.loss == tb.loss
    ea, eb = alone.evaluate(1, tb.weights, 1), cohorts.evaluate(1, tb.weights, 1)
    assert ea.result is not None and eb.result is not None
    assert (ea.result.num_examples, ea.result.loss_sum) == (
        eb.result.num_examples,
        eb.result.loss_sum,
    )
    np.testing.assert_array_equal(ea.result.confusion, eb.result.confusion)
    assert ea.sites == eb.sites == SITES
    assert ea.scores == eb.scores  # keyed by site either way
    # Each call was one message per worker: 3 sites at one, 2 at the other, never per site.
    assert sorted(grid.sent[-2:]) == [(201, 3), (202, 2)]
    assert not report.rejections


def test_an_attacking_site_in_a_cohort_is_rejected_alone(tmp_path: Path) -> None:
    (alone, alone_report), (cohorts, report), _ = _both(
        tmp_path, "attack=nan_update", "attack.fraction=0.4"
    )
    weights = _weights(alone)
    ta, tb = alone.train_round(1, weights, 1), cohorts.train_round(1, weights, 1)
    for key in weights:
        np.testing.assert_array_equal(ta.weights[key], tb.weights[key])
    assert tb.sites == ta.sites < SITES
    # The same sites were refused, by the same reasons.
    assert sorted(r.node_id - 11 for r in alone_report.rejections) == sorted(
        r.node_id - SITE_NODE_BASE for r in report.rejections
    )
    assert {r.reason for r in alone_report.rejections} == {r.reason for r in report.rejections}


def test_a_failing_site_fails_alone_with_its_reason(tmp_path: Path) -> None:
    grid = WorkerGrid()
    federation, report = _federation(
        tmp_path, CohortGrid(grid, SITES, workers=2), "attack.dropout=0.4"
    )
    trained = federation.train_round(1, _weights(federation), 1)
    expected = {s for s in range(SITES) if drops_out(federation.cfg.runtime.seed, s, 1, 0.4)}
    assert 0 < len(expected) < SITES  # the seed makes some, not all, sites drop out
    assert {r.node_id - SITE_NODE_BASE for r in report.rejections} == expected
    assert trained.sites == SITES - len(expected)
    assert all("dropped out" in r.reason for r in report.rejections), report.rejections


def test_a_worker_that_does_not_answer_loses_only_its_sites(tmp_path: Path) -> None:
    grid = WorkerGrid(silent=frozenset({202}))  # the second worker in id order: sites 1, 3
    federation, _ = _federation(tmp_path, CohortGrid(grid, SITES, workers=2))
    trained = federation.train_round(1, _weights(federation), 1)
    assert sorted(trained.examples) == [0, 2, 4]
    assert grid.timeouts == [30 * 3]  # a site's timeout, once per site of the longest cohort


def test_every_site_failing_in_cohorts_still_stops_the_run(tmp_path: Path) -> None:
    def broken(message: Message, context: Context) -> Message:
        raise OSError(f"disk full at site {context.node_config['partition-id']}")

    grid = WorkerGrid(handle=broken)
    federation, _ = _federation(tmp_path, CohortGrid(grid, SITES, workers=2))
    with pytest.raises(
        FederationError,
        match="every site failed to train: disk full at site 0; disk full at site 1",
    ):
        federation.train_round(1, _weights(federation), 1)


def test_shared_content_travels_once_and_unpacks_per_site() -> None:
    shared = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(4))})})
    own = RecordDict({"config": ConfigRecord({"x": 1})})
    packed = pack([shared, own, shared], [4, 0, 9], num_sites=10)
    assert sorted(packed) == ["0/arrays", "1/config", COHORT_KEY]
    parts = unpack(packed)
    assert [site for site, _ in parts] == [4, 0, 9]
    assert list(parts[0][1]) == ["arrays"] and list(parts[1][1]) == ["config"]
    np.testing.assert_array_equal(parts[2][1].array_records["arrays"]["w"].numpy(), np.ones(4))


def test_the_client_app_runs_cohorts_outside_the_attack_harness() -> None:
    assert app._mods == [cohort_mod, attack_mod]  # noqa: SLF001 - how Flower keeps them


def test_sites_are_nodes_only_once_every_worker_is_up() -> None:
    inner = FakeGrid([7])
    grid = CohortGrid(inner, num_sites=4, workers=2)
    assert grid.get_node_ids() == []
    inner.nodes.append(8)
    assert grid.get_node_ids() == [SITE_NODE_BASE + s for s in range(4)]


def test_replies_come_from_the_sites_node_ids() -> None:
    def echo(message: Message, context: Context) -> Message:
        return Message(
            RecordDict({"me": ConfigRecord({"pid": context.node_config["partition-id"]})}),
            reply_to=message,
        )

    cohort = CohortGrid(WorkerGrid(handle=echo), SITES, workers=2)
    content = RecordDict({"config": ConfigRecord({"k": 1})})
    messages = [Message(content, SITE_NODE_BASE + s, "query.echo") for s in (3, 1)]
    replies = cohort.send_and_receive(messages, timeout=None)
    got = {int(r.metadata.src_node_id): r.content.config_records["me"]["pid"] for r in replies}
    assert got == {SITE_NODE_BASE + 3: 3, SITE_NODE_BASE + 1: 1}
    with pytest.raises(ValueError, match="no site at node 7"):
        cohort.send_and_receive([Message(content, 7, "query.echo")])


def test_a_train_wave_can_carry_the_evaluation_of_the_model_sent(tmp_path: Path) -> None:
    """One message wave per round (issue 15, item 2): each site scores the model it is sent
    before training; summed, that is the evaluation a separate wave would have made."""
    (alone, _), (cohorts, report), grid = _both(tmp_path)
    weights = _weights(alone)
    separate = alone.evaluate(1, weights, 1)
    for federation in (alone, cohorts):
        trained = federation.train_round(2, weights, 1, evaluate_incoming=True)
        assert trained.incoming is not None and separate.result is not None
        assert trained.incoming.result is not None
        assert trained.incoming.sites == SITES
        assert trained.incoming.result.num_examples == separate.result.num_examples
        assert trained.incoming.result.loss_sum == pytest.approx(separate.result.loss_sum)
        np.testing.assert_array_equal(trained.incoming.result.confusion, separate.result.confusion)
        assert trained.incoming.scores == separate.scores
    assert sorted(n for n, _ in grid.sent) == [201, 202]  # one message per worker, no second wave
    assert not report.rejections


def test_a_train_reply_without_the_evaluation_is_a_failed_evaluation(tmp_path: Path) -> None:
    def forgetful(message: Message, context: Context) -> Message:
        reply = _handle(message, context)
        if context.node_config["partition-id"] == 3:  # an older app: no evaluation sent
            del reply.content[INCOMING_EVAL_KEY]
        return reply

    grid = WorkerGrid(handle=forgetful)
    federation, report = _federation(tmp_path, CohortGrid(grid, SITES, workers=2))
    trained = federation.train_round(2, _weights(federation), 1, evaluate_incoming=True)
    assert trained.sites == SITES and trained.incoming is not None
    assert trained.incoming.sites == SITES - 1
    [rejection] = report.rejections
    assert (rejection.server_round, rejection.phase) == (1, "evaluate")  # the model's round
    assert rejection.node_id == SITE_NODE_BASE + 3 and "clients.app" in rejection.reason

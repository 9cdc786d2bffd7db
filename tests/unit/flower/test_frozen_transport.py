"""Frozen parameters never travel (issue 17, item 1): under ``train.freeze`` every message the
server sends and every reply a site sends carries the trainable arrays only, the aggregate is
those arrays' FedAvg (a numpy oracle over torch trainings made here) with the frozen arrays as
they were, and a site whose frozen arrays are not the server's is rejected and recorded while
the others count. A grid answers with the real ClientApp handlers (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fakes import FakeGrid
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import evaluate_handler, monitor_handler, train_handler
from fedretrain.config import compose, to_yaml
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.records import FROZEN_DIGEST_KEY, MONITOR_QUERY
from fedretrain.flower.strategies import build_strategy
from fedretrain.monitor.stats import HistogramEdges
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.retraining.port import Serving
from fedretrain.site import ScenarioFederation, TaskModels
from fedretrain.training import lr_at, train

SITES = 3
FROZEN = ("net.1.weight", "net.1.bias")  # sine_mlp's first layer
OVERRIDES = [
    "scenario=sine_flip",
    "scenario.num_periods=3",
    "scenario.schedule.at=[1]",
    f"runtime.num_clients={SITES}",
    "train.freeze=[net.1]",
]
EDGES = HistogramEdges(np.tile(np.linspace(0.1, 0.9, 7), (2, 1)))


class SiteGrid(FakeGrid):
    """Nodes 11..13 are sites 0..2 running clients.app; every message and reply is kept;
    ``change`` may alter a message before its site reads it."""

    def __init__(self, change=None) -> None:
        super().__init__([11, 12, 13])
        self.change = change or (lambda node, message: message)
        self.messages: list[Message] = []
        self.replies: list[Message] = []

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            self.messages.append(message)
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node
            context = Context(
                1, node, {"partition-id": node - 11, "num-partitions": SITES}, RecordDict(), {}
            )
            handler = {MONITOR_QUERY: monitor_handler, "evaluate": evaluate_handler}.get(
                message.metadata.message_type, train_handler
            )
            try:
                reply = handler(self.change(node, message), context)
            except Exception as err:  # what Flower makes of a handler's exception
                reply = Message(Error(code=0, reason=str(err)), reply_to=message)
            replies.append(reply)
        self.replies += replies
        return replies


def _federation(tmp_path: Path, grid: SiteGrid) -> tuple[FlowerFederation, RunReport, TaskModels]:
    node = compose(OVERRIDES)
    cfg = to_typed(node, build_targets=False)
    models = TaskModels(cfg, (2,), 2)
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
        frozen=models.frozen,
    )
    return federation, report, models


def _names(records) -> set[str]:
    return {name for record in records.values() for name in record}


def test_only_trainable_arrays_travel_and_the_frozen_ones_come_back_as_sent(
    tmp_path: Path,
) -> None:
    grid = SiteGrid()
    federation, report, models = _federation(tmp_path, grid)
    weights = models.fresh(seed=0)
    trained = federation.train_round(1, weights, 1)
    trainable = set(weights) - set(FROZEN)
    assert grid.messages and all(
        _names(m.content.array_records) == trainable for m in grid.messages
    )
    assert all(_names(r.content.array_records) == trainable for r in grid.replies)
    assert all(
        m.content.config_records["config"][FROZEN_DIGEST_KEY] == models.frozen.digest
        for m in grid.messages
    )
    assert list(trained.weights) == list(weights) and not report.rejections
    for name in FROZEN:
        assert trained.weights[name] is weights[name]
    # The oracle: each site trains here in torch with the same seed; FedAvg by examples.
    cfg = federation.cfg
    scenario = ScenarioFederation(cfg, SITES)
    updates, counts = [], []
    for site in range(SITES):
        data = scenario.window(site, 1)[0]
        model = scenario.model
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        seed = np.random.SeedSequence([cfg.runtime.seed, site, 1]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        train(model, data, cfg.train, lr_at(cfg.train, 1, 3), torch.device("cpu"), generator)
        updates.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
        counts.append(len(data))
    for name in trainable:
        expected = np.average([u[name] for u in updates], axis=0, weights=counts)
        np.testing.assert_allclose(trained.weights[name], expected, rtol=1e-5, atol=1e-6)


def test_queries_and_evaluations_carry_the_trainable_arrays_only(tmp_path: Path) -> None:
    grid = SiteGrid()
    federation, report, models = _federation(tmp_path, grid)
    weights = models.fresh(seed=0)
    other = models.fresh(seed=1)
    federation.evaluate(0, weights, 0)
    federation.collect_stats(0, weights, 1, EDGES, serving=Serving({0: weights, 1: other}, {}, 0))
    trainable = set(weights) - set(FROZEN)
    assert len(grid.messages) == 2 * SITES
    for message in grid.messages:
        records = message.content.array_records
        models_sent = {k: r for k, r in records.items() if k != "edges"}
        assert models_sent and all(set(r) == trainable for r in models_sent.values())
    assert not report.rejections


def test_a_site_whose_frozen_arrays_differ_is_rejected_and_the_others_count(
    tmp_path: Path,
) -> None:
    def other_digest(node: int, message: Message) -> Message:
        if node == 12:  # as if site 1 held another pretrained file than the server
            config = ConfigRecord(dict(message.content.config_records["config"]))
            config[FROZEN_DIGEST_KEY] = "0" * 32
            content = RecordDict(dict(message.content.items()))  # the others' stays as it was
            content["config"] = config
            message.content = content
        return message

    grid = SiteGrid(other_digest)
    federation, report, models = _federation(tmp_path, grid)
    trained = federation.train_round(1, models.fresh(seed=0), 1)
    assert trained.sites == 2 and sorted(trained.examples) == [0, 2]
    reasons = {r.node_id: r.reason for r in report.rejections}
    assert list(reasons) == [12]
    assert "frozen arrays (train.freeze) are not the server's" in reasons[12]

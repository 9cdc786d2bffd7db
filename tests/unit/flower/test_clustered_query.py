"""adaptation=clustered over Flower messages (issue 14, item 2): the live models travel with
the statistics query, each site serves its cluster's model and scores every one, a site whose
per-model scores are malformed is rejected and recorded while the others count, and a
cluster's training round reaches its sites only. A grid answers with the real ClientApp
handlers (no Ray); the scores are checked against torch predictions made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fakes import FakeGrid
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import evaluate_handler, monitor_handler, train_handler
from fedretrain.config import ConfigError, compose, to_yaml
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.records import MODEL_SCORES_KEY, MONITOR_QUERY
from fedretrain.flower.strategies import build_strategy
from fedretrain.monitor.stats import HistogramEdges
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.retraining.port import Serving
from fedretrain.site import ScenarioFederation
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.training import lr_at, train

SITES = 3
OVERRIDES = [
    "scenario=sine_flip",
    "scenario.num_periods=3",
    "scenario.schedule.at=[1]",
    f"runtime.num_clients={SITES}",
    "adaptation=clustered",
]
EDGES = HistogramEdges(np.tile(np.linspace(0.1, 0.9, 7), (2, 1)))


class SiteGrid(FakeGrid):
    """Nodes 11..13 are sites 0..2 running clients.app; ``change`` may alter a reply."""

    def __init__(self, change=None) -> None:
        super().__init__([11, 12, 13])
        self.change = change or (lambda node, reply: reply)
        self.sent: list[tuple[str, int]] = []

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            self.sent.append((message.metadata.message_type, node))
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node
            context = Context(
                1, node, {"partition-id": node - 11, "num-partitions": SITES}, RecordDict(), {}
            )
            handler = {MONITOR_QUERY: monitor_handler, "evaluate": evaluate_handler}.get(
                message.metadata.message_type, train_handler
            )
            replies.append(self.change(node, handler(message, context)))
        return replies


def _federation(tmp_path: Path, grid: SiteGrid) -> tuple[FlowerFederation, RunReport]:
    node = compose(OVERRIDES)
    cfg = to_typed(node, build_targets=False)
    report = RunReport(tmp_path, SITES)
    federation = FlowerFederation(
        grid,
        build_strategy(cfg),
        cfg,
        to_yaml(node),
        report,
        num_features=2,
        num_classes=2,
        num_rounds=3,
    )
    return federation, report


def _models(federation: FlowerFederation) -> dict[int, dict[str, np.ndarray]]:
    models = {}
    for cluster, seed in ((0, 0), (1, 1)):
        torch.manual_seed(seed)
        model = ScenarioFederation(federation.cfg, SITES).model
        for p in model.parameters():
            torch.nn.init.normal_(p, std=1.0)
        models[cluster] = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return models


def _oracle(federation: FlowerFederation, weights, site: int, period: int) -> tuple[int, int]:
    """The model's (correct, examples) on the site's whole window, by torch here."""
    scenario = ScenarioFederation(federation.cfg, SITES)
    model = scenario.model
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    correct = total = 0
    for data in scenario.window(site, period):
        with torch.no_grad():
            pred = model(torch.from_numpy(data.x)).argmax(dim=1).numpy()
        correct += int((pred == data.y).sum())
        total += len(data)
    return correct, total


def test_each_site_serves_its_cluster_and_scores_every_model(tmp_path: Path) -> None:
    grid = SiteGrid()
    federation, report = _federation(tmp_path, grid)
    models = _models(federation)
    serving = Serving(models, {0: 0, 1: 1}, default=0)  # site 2 has no cluster yet: default
    collected = federation.collect_stats(0, models[0], 1, EDGES, serving=serving)
    assert sorted(collected.model_scores) == [0, 1, 2]
    for site in range(SITES):
        for cluster, weights in models.items():
            assert collected.model_scores[site][cluster] == _oracle(federation, weights, site, 1)
        served = {0: 0, 1: 1, 2: 0}[site]
        window = collected.stats.sites[site]
        assert int(np.trace(window.confusion)) == collected.model_scores[site][served][0]
    assert collected.rejected == 0 and not report.rejections


def test_malformed_per_model_scores_are_rejected_and_the_rest_count(tmp_path: Path) -> None:
    def lie(node: int, reply: Message) -> Message:
        if node == 12:  # site 1 claims more correct answers than it has examples
            table = reply.content.array_records[MODEL_SCORES_KEY]["table"].numpy().copy()
            table[:, 1] = table[:, 2] + 5
            reply.content[MODEL_SCORES_KEY] = ArrayRecord({"table": Array(table)})
        if node == 13:  # site 2 sends none (an older app)
            del reply.content[MODEL_SCORES_KEY]
        return reply

    federation, report = _federation(tmp_path, SiteGrid(lie))
    models = _models(federation)
    collected = federation.collect_stats(0, models[0], 1, EDGES, serving=Serving(models, {}, 0))
    assert sorted(collected.stats.sites) == [0] and sorted(collected.model_scores) == [0]
    assert collected.rejected == 2
    reasons = {r.node_id: r.reason for r in report.rejections}
    assert "0 <= correct <= examples" in reasons[12]
    assert "no per-model scores" in reasons[13]


def test_a_clusters_round_trains_at_its_sites_only(tmp_path: Path) -> None:
    grid = SiteGrid()
    federation, _ = _federation(tmp_path, grid)
    models = _models(federation)
    federation.collect_stats(0, models[0], 1, EDGES, serving=Serving(models, {}, 0))  # learns nodes
    grid.sent.clear()
    trained = federation.train_round(1, models[1], 1, sites=frozenset({0, 2}))
    assert sorted(node for kind, node in grid.sent) == [11, 13]
    assert sorted(trained.examples) == [0, 2] and trained.sites == 2


def test_a_resumed_federation_learns_its_sites_before_a_clusters_round(tmp_path: Path) -> None:
    """A resumed run that kept the period's statistics trains a cluster before any statistics
    reply has named the nodes: one evaluation wave names them, and the round still reaches
    the cluster's sites only (before the fix it reached none: every site's update was lost)."""
    grid = SiteGrid()
    federation, _ = _federation(tmp_path, grid)
    models = _models(federation)
    trained = federation.train_round(1, models[1], 1, sites=frozenset({0, 2}))
    assert sorted(grid.sent) == [
        ("evaluate", 11),
        ("evaluate", 12),
        ("evaluate", 13),
        ("train", 11),
        ("train", 13),
    ]
    assert sorted(trained.examples) == [0, 2] and trained.sites == 2
    grid.sent.clear()
    federation.train_round(2, trained.weights, 1, sites=frozenset({1}))
    assert grid.sent == [("train", 12)]  # known now: no second evaluation wave


def test_a_buffered_round_trains_each_site_on_its_windows_since_its_start(
    tmp_path: Path,
) -> None:
    """Issue 14, item 4: a cluster's round names each site's buffer; the site trains on the
    training part of every window from its start through the period, and counts them all."""
    grid = SiteGrid()
    federation, report = _federation(tmp_path, grid)
    models = _models(federation)
    federation.collect_stats(0, models[0], 1, EDGES, serving=Serving(models, {}, 0))  # learns nodes
    trained = federation.train_round(1, models[0], 2, sites=frozenset({0, 1}), since={0: 0})
    scenario = ScenarioFederation(federation.cfg, SITES)
    windows = {s: [scenario.window(s, p)[0] for p in range(3)] for s in (0, 1)}
    assert trained.examples == {0: sum(map(len, windows[0])), 1: len(windows[1][2])}
    assert not report.rejections
    # Site 0 alone, from period 0: its update is one torch training on the three windows.
    alone = federation.train_round(1, models[0], 2, sites=frozenset({0}), since={0: 0})
    cfg = federation.cfg
    data = ArrayDataset(
        np.concatenate([w.x for w in windows[0]]), np.concatenate([w.y for w in windows[0]]), 2
    )
    model = scenario.model
    model.load_state_dict({k: torch.from_numpy(v) for k, v in models[0].items()})
    seed = np.random.SeedSequence([cfg.runtime.seed, 0, 1]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(seed))
    train(model, data, cfg.train, lr_at(cfg.train, 1, 3), torch.device("cpu"), generator)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(alone.weights[name], value.numpy(), rtol=1e-5, atol=1e-6)


def test_clustered_refuses_what_it_cannot_account_or_serve() -> None:
    for overrides, fragment in (
        ([*OVERRIDES, "privacy=dpsgd", "privacy.user_level=true"], "privacy.user_level=false"),
        (["adaptation=clustered"], "needs a drift scenario"),
    ):
        try:
            to_typed(compose(overrides), build_targets=False)
        except ConfigError as err:
            assert fragment in str(err)
        else:
            raise AssertionError(f"{overrides} was accepted")
    # A canary is per cluster now (issue 14, item 3): accepted.
    typed = to_typed(compose([*OVERRIDES, "release.canary_fraction=0.3"]), build_targets=False)
    assert typed.release.canary_fraction == 0.3

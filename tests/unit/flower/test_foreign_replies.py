"""Issue 18, item 2, with validation off: a stock Flower ClientApp's evaluation (no confusion
matrix to sum) is left out and recorded, and the round goes on. It used to crash the server:
Flower's InconsistentMessageReplies beside fedretrain's sites, KeyError: 'num-classes' when
every site was stock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fakes import FakeGrid
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedretrain.config import compose, to_yaml
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.records import eval_metrics
from fedretrain.flower.strategies import build_strategy
from fedretrain.metrics import confusion_matrix
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.training import EvalResult

STOCK = 3  # the node that runs a ClientApp written with Flower's API only


class ReplyingGrid(FakeGrid):
    """Every node answers at once: ours with fedretrain's counts, the ``stock`` ones as Flower's
    quickstart does ({"eval_loss", "eval_acc", "num-examples"})."""

    def __init__(self, nodes: list[int], stock: set[int]) -> None:
        super().__init__(nodes)
        self.stock = stock

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            TaskIdentity.node_id = node  # a reply takes its source from the process's identity
            if node in self.stock:
                metrics = MetricRecord({"eval_loss": 0.4, "eval_acc": 0.8, "num-examples": 10})
            else:
                cm = confusion_matrix(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2)
                metrics = eval_metrics(EvalResult(4, 2.0, cm), site=node)
            replies.append(Message(RecordDict({"metrics": metrics}), reply_to=message))
        return replies


def _federation(tmp_path: Path, stock: set[int]) -> tuple[FlowerFederation, RunReport]:
    cfg_node = compose(["validation=off", "runtime.num_clients=3", "task=sea_mlp"])
    cfg = to_typed(cfg_node)
    assert not cfg.validation.enabled
    report = RunReport(tmp_path, 1)
    federation = FlowerFederation(
        ReplyingGrid([1, 2, STOCK], stock),
        build_strategy(cfg),
        cfg,
        to_yaml(cfg_node),
        report,
        num_features=3,
        num_classes=2,
        num_rounds=1,
        periods=False,
    )
    return federation, report


WEIGHTS = {"w": np.zeros((2, 3), dtype=np.float32)}


def test_with_validation_off_a_stock_evaluation_is_left_out_and_recorded(tmp_path: Path) -> None:
    federation, report = _federation(tmp_path, {STOCK})
    evaluation = federation.evaluate(1, WEIGHTS, 0)
    assert evaluation.sites == 2
    assert evaluation.result is not None and evaluation.result.num_examples == 8
    assert evaluation.accuracy == 0.75  # the two sites' confusion matrices, summed
    [rejection] = report.rejections
    assert (rejection.server_round, rejection.phase, rejection.node_id) == (1, "evaluate", STOCK)
    assert "clients.app" in rejection.reason and "confusion" in rejection.reason


def test_with_validation_off_only_stock_sites_give_no_score_and_no_crash(tmp_path: Path) -> None:
    federation, report = _federation(tmp_path, {1, 2, STOCK})
    evaluation = federation.evaluate(1, WEIGHTS, 0)
    assert (evaluation.sites, evaluation.result) == (0, None)
    assert np.isnan(evaluation.accuracy)
    assert sorted(r.node_id for r in report.rejections) == [1, 2, STOCK]

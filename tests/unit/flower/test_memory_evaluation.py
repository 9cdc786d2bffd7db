"""An evaluation on earlier periods' holdouts (``release.memory_periods``, issue 17, item 3)
over Flower messages: each site scores the model on the holdouts of the periods named, together,
and the federation sums them; checked against torch predictions made here. A grid answers with
the real ClientApp handlers (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fakes import FakeGrid
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import evaluate_handler
from fedretrain.config import compose, to_yaml
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.records import MEMORY_KEY
from fedretrain.flower.strategies import build_strategy
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.site import ScenarioFederation, TaskModels

SITES = 3
OVERRIDES = [
    "scenario=sine_flip",
    "scenario.num_periods=4",
    "scenario.schedule.at=[2]",
    f"runtime.num_clients={SITES}",
]


class SiteGrid(FakeGrid):
    def __init__(self) -> None:
        super().__init__([11, 12, 13])
        self.messages: list[Message] = []

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            self.messages.append(message)
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node
            context = Context(
                1, node, {"partition-id": node - 11, "num-partitions": SITES}, RecordDict(), {}
            )
            replies.append(evaluate_handler(message, context))
        return replies


def test_a_memory_evaluation_scores_the_earlier_holdouts_together(tmp_path: Path) -> None:
    node = compose(OVERRIDES)
    cfg = to_typed(node, build_targets=False)
    report = RunReport(tmp_path, SITES)
    grid = SiteGrid()
    federation = FlowerFederation(
        grid, build_strategy(cfg, report.reject), cfg, to_yaml(node), report,
        num_features=2, num_classes=2, num_rounds=3,
    )  # fmt: skip
    weights = TaskModels(cfg, (2,), 2).fresh(seed=3)
    evaluation = federation.evaluate(5, weights, 3, memory=(0, 1))
    assert all(m.content.config_records["config"][MEMORY_KEY] == [0, 1] for m in grid.messages)
    scenario = ScenarioFederation(cfg, SITES)
    model = scenario.model
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    for site in range(SITES):
        holdouts = [scenario.window(site, p)[1] for p in (0, 1)]
        x = np.concatenate([h.x for h in holdouts])
        y = np.concatenate([h.y for h in holdouts])
        with torch.no_grad():
            correct = int((model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
        assert evaluation.scores[site] == (correct, len(y))
    now = federation.evaluate(5, weights, 3)  # without memory: period 3's holdouts
    assert now.scores[0][1] == len(scenario.window(0, 3)[1])
    assert not report.rejections

"""Groups of users over Flower messages (issue 17, item 4): a tabular file's group column is
read as no feature; every site's evaluate reply carries one confusion matrix per group, which
the federation sums (a numpy oracle over the saved model here); a reply whose per-group
matrices do not add up is rejected and recorded while the others count; and the settings are
checked before anything starts. A grid answers with the real ClientApp handlers (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import FakeGrid
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import evaluate_handler
from fedretrain.config import compose, to_yaml
from fedretrain.errors import ConfigError
from fedretrain.flower.federation import FlowerFederation
from fedretrain.flower.strategies import build_strategy
from fedretrain.groups import group_ids
from fedretrain.metrics import group_confusion
from fedretrain.preflight import to_typed
from fedretrain.report import RunReport
from fedretrain.site import Site, TaskModels
from fedretrain.tasks.tabular_file import load_table

SITES = 3


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["label"] = (x[:, 0] + x[:, 1] > 0).astype(int)
    frame["region"] = rng.choice(["north", "south", "west"], 300, p=[0.6, 0.3, 0.1])
    path = tmp_path / "sites.csv"
    frame.to_csv(path, index=False)
    return path


def overrides(table: Path) -> list[str]:
    return [
        "task=tabular_file",
        f"task.dataset.path={table}",
        "task.dataset.group_column=region",
        f"runtime.num_clients={SITES}",
    ]


def test_the_group_column_is_groups_and_not_a_feature(table: Path) -> None:
    data = load_table(str(table), group_column="region")
    assert data.input_shape == (3,) and data.num_groups == 3
    names = pd.read_csv(table)["region"]
    assert np.array_equal(data.groups, pd.Categorical(names, ["north", "south", "west"]).codes)


class SiteGrid(FakeGrid):
    """Nodes 11..13 are sites 0..2 running clients.app's evaluate handler; ``change`` may
    alter a reply."""

    def __init__(self, change=None) -> None:
        super().__init__([11, 12, 13])
        self.change = change or (lambda node, reply: reply)

    def send_and_receive(self, messages: list[Message], timeout: float | None = None):
        replies = []
        for message in messages:
            node = int(message.metadata.dst_node_id)
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node
            context = Context(
                1, node, {"partition-id": node - 11, "num-partitions": SITES}, RecordDict(), {}
            )
            replies.append(self.change(node, evaluate_handler(message, context)))
        return replies


def federation(table: Path, grid: SiteGrid, tmp_path: Path) -> tuple[FlowerFederation, RunReport]:
    node = compose(overrides(table))
    cfg = to_typed(node)
    report = RunReport(tmp_path / "run", SITES)
    fed = FlowerFederation(
        grid, build_strategy(cfg, report.reject), cfg, to_yaml(node), report,
        num_features=3, num_classes=2, num_rounds=1, periods=False,
    )  # fmt: skip
    return fed, report


def test_each_site_scores_every_group_and_the_federation_sums_them(
    table: Path, tmp_path: Path
) -> None:
    fed, report = federation(table, SiteGrid(), tmp_path)
    weights = TaskModels(fed.cfg, (3,), 2).fresh(seed=0)
    evaluation = fed.evaluate(1, weights, 0)
    assert evaluation.result is not None and not report.rejections
    expected = np.zeros((3, 2, 2), np.int64)
    for pid in range(SITES):
        site = Site.build(fed.cfg, pid, SITES)
        site.model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        with torch.no_grad():
            pred = site.model(torch.from_numpy(site.holdout.x)).argmax(1).numpy()
        assert site.holdout.groups is not None
        expected += group_confusion(site.holdout.y, pred, site.holdout.groups, 3, 2)
    assert np.array_equal(evaluation.result.groups, expected)
    assert np.array_equal(evaluation.result.groups.sum(axis=0), evaluation.result.confusion)


def test_per_group_matrices_that_do_not_add_up_are_rejected(table: Path, tmp_path: Path) -> None:
    def inflate(node: int, reply: Message) -> Message:
        if node == 12:  # site 1 claims one more sample of group 0 than its confusion holds
            metrics = dict(reply.content.metric_records["metrics"])
            values = list(metrics["group-confusion"])
            values[0] += 1
            metrics["group-confusion"] = values
            reply.content = RecordDict({"metrics": MetricRecord(metrics)})
        return reply

    fed, report = federation(table, SiteGrid(inflate), tmp_path)
    evaluation = fed.evaluate(1, TaskModels(fed.cfg, (3,), 2).fresh(seed=0), 0)
    assert evaluation.sites == 2
    reasons = {r.node_id: r.reason for r in report.rejections}
    assert list(reasons) == [12] and "do not add up to the confusion matrix" in reasons[12]


def test_group_settings_are_checked_before_anything_starts(table: Path) -> None:
    with pytest.raises(ConfigError, match="no group column 'regoin'"):
        to_typed(compose([*overrides(table)[:2], "task.dataset.group_column=regoin"]))
    with pytest.raises(ConfigError, match="task.group_feature=7: the inputs have 3 features"):
        plain = [*overrides(table)[:2], "task.dataset.feature_columns=[a,b,c]"]
        to_typed(compose([*plain, "task.group_feature=7"]))
    with pytest.raises(ConfigError, match="set one or the other"):
        to_typed(compose([*overrides(table), "task.group_feature=0"]))


def test_a_synthetic_group_is_a_feature_rule() -> None:
    node = compose(["task=sea_mlp", "task.group_feature=2", "task.group_threshold=8"])
    cfg = to_typed(node)
    site = Site.build(cfg, 0, cfg.runtime.num_clients)
    found = group_ids(site.holdout, cfg.task)
    assert found is not None
    ids, count = found
    assert count == 2
    assert np.array_equal(ids, (site.holdout.x[:, 2] > 8).astype(np.int64))
    assert 0 < ids.mean() < 0.5  # a minority

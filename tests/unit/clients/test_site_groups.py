"""A deployed site's groups of users (issue 17, item 4): with ``scenario.stream.group`` the
site's folder files name each row's group, and its evaluate reply carries one confusion
matrix per group over its holdout, checked here against numpy. Real CSV files and the real
evaluate handler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import _split, evaluate_handler
from fedretrain.config import compose, from_yaml, to_yaml
from fedretrain.flower.records import DATA_DIR_KEY, SITE_ID_KEY, eval_result, instruction_config
from fedretrain.site import model_for
from fedretrain.tasks.dataset import ArrayDataset

SITE = 2
REGIONS = ("north", "south", "east")


def test_a_deployed_site_reports_a_confusion_per_group(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (200, 3))
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2]})
    frame["y"] = (x[:, 0] + x[:, 1] > 8).astype(int)
    frame["region"] = rng.choice(REGIONS, 200)
    frame.to_csv(data / "p0.csv", index=False)
    os.utime(data / "p0.csv", (1_000, 1_000))
    config_yaml = to_yaml(
        compose(
            [
                "scenario=deployed",
                "scenario.stream.min_age_s=0",
                "scenario.stream.group=region",
                f"scenario.stream.groups=[{','.join(REGIONS)}]",
                "runtime.num_clients=1",
            ]
        )
    )
    cfg = from_yaml(config_yaml)
    model = model_for(cfg, (3,), 2)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    context = Context(1, 1, {DATA_DIR_KEY: str(data), SITE_ID_KEY: SITE}, RecordDict(), {})  # type: ignore[arg-type]
    config = instruction_config(config_yaml, num_rounds=1, period=0)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    reply = evaluate_handler(
        Message(content=content, dst_node_id=1, message_type="evaluate"), context
    )
    result = eval_result(reply.content.metric_records["metrics"])  # type: ignore[arg-type]
    assert result.groups is not None and result.groups.shape == (3, 2, 2)
    # The oracle: the same holdout split of the file's rows, the model's predictions, numpy.
    groups = np.array([REGIONS.index(r) for r in frame["region"]])
    rows = ArrayDataset(x.astype(np.float32), frame["y"].to_numpy(), 2, groups, 3)
    holdout = _split(cfg, rows, SITE, 0)[1]
    with torch.no_grad():
        predicted = model(torch.from_numpy(holdout.x)).argmax(1).numpy()
    expected = np.zeros((3, 2, 2), np.int64)
    np.add.at(expected, (holdout.groups, holdout.y, predicted), 1)
    np.testing.assert_array_equal(result.groups, expected)
    assert expected.sum() == result.num_examples and (expected.sum(axis=(1, 2)) > 0).all()

"""A deployed site's training buffer (issue 14, item 4): a cluster's round names the first
period each site trains on, and the site reads the files it took for those periods again; a
period it was offline for is skipped. Real CSV files and the real train handler."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import train_handler
from fedretrain.config import compose, from_yaml, to_yaml
from fedretrain.flower.records import (
    BUFFER_FROM_KEY,
    BUFFER_SITES_KEY,
    DATA_DIR_KEY,
    SITE_ID_KEY,
    instruction_config,
)
from fedretrain.site import model_for

SITE = 4


def _csv(folder: Path, name: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (n, 3))
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": x[:, 0] > 5})
    frame["y"] = frame["y"].astype(int)
    frame.to_csv(folder / name, index=False)
    os.utime(folder / name, (1_000 + seed, 1_000 + seed))


def _train(config_yaml: str, period: int, context: Context, since: int | None) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    cfg = from_yaml(config_yaml)
    config = instruction_config(config_yaml, num_rounds=3, period=period)
    config["server-round"] = 1
    if since is not None:
        config[BUFFER_SITES_KEY], config[BUFFER_FROM_KEY] = [SITE], [since]
    model = model_for(cfg, (3,), 2)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    message = Message(content=content, dst_node_id=1, message_type="train")
    return train_handler(message, context)


def test_a_deployed_site_trains_on_the_files_it_took_since_its_buffer_starts(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config_yaml = to_yaml(
        compose(["scenario=deployed", "scenario.stream.min_age_s=0", "runtime.num_clients=1"])
    )
    holdout = from_yaml(config_yaml).data.holdout_fraction
    context = Context(1, 1, {DATA_DIR_KEY: str(data), SITE_ID_KEY: SITE}, RecordDict(), {})  # type: ignore[arg-type]

    def trained(n: int) -> int:  # a window's training rows: the rest is its holdout
        return n - max(1, round(holdout * n))

    _csv(data, "p0.csv", 50, seed=0)
    first = _train(config_yaml, 0, context, since=None)
    assert first.content.metric_records["metrics"]["num-examples"] == trained(50)
    # Offline in period 1; back in period 2, whose round asks for the windows since period 0.
    _csv(data, "p2a.csv", 30, seed=1)
    _csv(data, "p2b.csv", 40, seed=2)
    reply = _train(config_yaml, 2, context, since=0)
    assert reply.content.metric_records["metrics"]["num-examples"] == trained(50) + trained(70)
    # Without a buffer the same round trains on period 2's window alone.
    alone = _train(config_yaml, 2, context, since=None)
    assert alone.content.metric_records["metrics"]["num-examples"] == trained(70)

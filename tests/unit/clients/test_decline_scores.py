"""A site with no training data this period still scores the model it is sent when the train
instruction asks (issue 15, one message wave per round): its train reply declines and carries
what its evaluate reply would say. The real train and evaluate handlers are the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import clients.app as client
from fedretrain.config import compose, from_yaml, to_yaml
from fedretrain.flower.records import (
    INCOMING_EVAL_KEY,
    decline_reason,
    instruction_config,
)
from fedretrain.site import Site, model_for
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.validation import NO_DATA_PHASE


@pytest.mark.parametrize("holdout_rows", [40, 0])
def test_a_site_without_training_data_declines_and_scores_the_model_sent(
    monkeypatch: pytest.MonkeyPatch, holdout_rows: int
) -> None:
    config_yaml = to_yaml(compose(["task=sea_mlp", "runtime.num_clients=1"]))
    cfg = from_yaml(config_yaml)
    model = model_for(cfg, (3,), 2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (holdout_rows, 3)).astype(np.float32)
    holdout = ArrayDataset(x, (x[:, 0] + x[:, 1] > 8).astype(np.int64), 2)
    empty = ArrayDataset(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), 2)
    site = Site(0, empty, holdout, model, torch.device("cpu"))
    monkeypatch.setattr(client, "_site_for", lambda instruction, context: (cfg, site, None))
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 1}, RecordDict(), {})  # type: ignore[arg-type]
    weights = ArrayRecord({k: v.clone() for k, v in model.state_dict().items()})

    def message(kind: str, config: ConfigRecord) -> Message:
        content = RecordDict({"arrays": weights, "config": config})
        return Message(content=content, dst_node_id=1, message_type=kind)

    asked = instruction_config(config_yaml, 3, period=1, evaluate_incoming=True)
    reply = client.train_handler(message("train", asked), context)
    assert decline_reason(reply) == (NO_DATA_PHASE, "no training data in period 1")
    if not holdout_rows:  # nothing to score: a plain decline, as before
        assert INCOMING_EVAL_KEY not in reply.content.config_records
        return
    scored = dict(reply.content.config_records[INCOMING_EVAL_KEY])
    evaluated = client.evaluate_handler(
        message("evaluate", instruction_config(config_yaml, 3, period=1)), context
    )
    assert scored == dict(evaluated.content.metric_records["metrics"])
    assert scored["num-examples"] == holdout_rows
    not_asked = instruction_config(config_yaml, 3, period=1)
    plain = client.train_handler(message("train", not_asked), context)
    assert INCOMING_EVAL_KEY not in plain.content.config_records

"""The ClientApp: each site trains and evaluates the global model on its own data.

Flower builds a fresh ClientApp call for every message, so the site's data and model skeleton
are cached per worker process, keyed by the run config and the partition.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedretrain.config import RunConfig, from_yaml
from fedretrain.flower.records import (
    CONFIG_KEY,
    NUM_ROUNDS_KEY,
    eval_metrics,
    train_metrics,
)
from fedretrain.site import Site
from fedretrain.training import evaluate, lr_at, train

app = ClientApp()


@lru_cache(maxsize=4)
def _site(config_yaml: str, partition_id: int, num_partitions: int) -> tuple[RunConfig, Site]:
    cfg = from_yaml(config_yaml)
    torch.set_num_threads(cfg.runtime.torch_threads)
    return cfg, Site.build(cfg, partition_id, num_partitions)


def _load(msg: Message, context: Context) -> tuple[RunConfig, Site]:
    config = msg.content["config"]
    cfg, site = _site(
        str(config[CONFIG_KEY]),
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
    )
    state = msg.content["arrays"].to_torch_state_dict()
    site.model.load_state_dict(state)
    return cfg, site


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    cfg, site = _load(msg, context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    lr = lr_at(cfg.train, server_round, int(config[NUM_ROUNDS_KEY]))
    seed = np.random.SeedSequence([cfg.runtime.seed, site.partition_id, server_round])
    generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
    result = train(
        site.model,
        site.train_data,
        cfg.train,
        lr,
        site.device,
        generator,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    content = RecordDict(
        {"arrays": ArrayRecord(site.model.state_dict()), "metrics": train_metrics(result)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    _, site = _load(msg, context)
    result = evaluate(site.model, site.holdout, site.device)
    return Message(content=RecordDict({"metrics": eval_metrics(result)}), reply_to=msg)

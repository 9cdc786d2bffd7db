"""The default fedretrain run's workload as a stock Flower app, built as Flower's
``quickstart-pytorch`` builds it: the baseline of ``scripts/bench_vs_flower.py``.

Like the quickstart, a task part (model, data, train, test), a ClientApp whose ``@app.train``
and ``@app.evaluate`` build a fresh model for every message and take their partition from a
process-level cache (the quickstart keeps its ``FederatedDataset`` in a global and cuts the
partition from it on each call), and a ServerApp that runs ``FedAvg(...).start(...)``. It runs
on Flower's simulation engine with Flower's defaults: ``run_simulation`` without a
``backend_config`` (2 CPUs per simulated node, Ray's ``OMP_NUM_THREADS=2``, torch's own thread
count), one node per site.

The work is the default fedretrain run's, item for item: scikit-learn's bundled digits cut
into the same IID partitions and holdouts, the same ``DigitsCNN`` with the same initial
weights, the default ``train`` config (optimizer, learning rate, epochs, batch size, batch
order) through the same training and evaluation functions, 10 sites, 10 rounds, every site
training and evaluating in every round (``min_available_nodes`` = the sites, so that the first
round does not start with only the first two).

Usage
-----
    .venv/bin/python scripts/stock_flower_app.py --out /tmp/stock.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedretrain.config import compose
from fedretrain.models import DigitsCNN
from fedretrain.partition import IidPartitioner
from fedretrain.preflight import to_typed
from fedretrain.site import model_for
from fedretrain.tasks.digits import load_digits
from fedretrain.training import evaluate, lr_at, train

RUN = to_typed(compose([]))  # the default run's settings: the same work on both sides
SITES, ROUNDS, SEED = RUN.runtime.num_clients, RUN.runtime.num_rounds, RUN.runtime.seed

# ----------------------------------------------------------------------------- task


def net() -> DigitsCNN:
    """The default task's model (``conf/task/digits_cnn.yaml``)."""
    return DigitsCNN((1, 8, 8), 10, channels=(16, 32), hidden=64)


@functools.cache
def _pool() -> Any:
    return load_digits()


def load_data(partition_id: int, num_partitions: int) -> tuple[Any, Any]:
    """A site's (train, holdout): its IID partition of the digits, cut as ``Site.build`` cuts
    it; the data set is loaded once per process, as the quickstart caches its own."""
    pool = _pool()
    parts = IidPartitioner().partition(pool.y, num_partitions, np.random.default_rng([SEED, 0]))
    local = pool.subset(parts[partition_id])
    return local.split(RUN.data.holdout_fraction, np.random.default_rng([SEED, 1, partition_id]))


def _generator(partition_id: int, server_round: int) -> torch.Generator:
    """The batch order fedretrain's sites use, so both sides train on the same batches."""
    state = np.random.SeedSequence([SEED, partition_id, server_round]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


# ----------------------------------------------------------------------------- ClientApp

client_app = ClientApp()


@client_app.train()
def train_handler(msg: Message, context: Context) -> Message:
    model = net()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    train_data, _ = load_data(pid, int(context.node_config["num-partitions"]))  # type: ignore[arg-type]
    server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
    lr = lr_at(RUN.train, server_round, ROUNDS)
    result = train(
        model, train_data, RUN.train, lr, torch.device("cpu"), _generator(pid, server_round)
    )
    metrics = MetricRecord({"train_loss": result.mean_loss, "num-examples": result.num_examples})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    model = net()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    _, holdout = load_data(pid, int(context.node_config["num-partitions"]))  # type: ignore[arg-type]
    result = evaluate(model, holdout, torch.device("cpu"))
    n = max(result.num_examples, 1)
    metrics = MetricRecord(
        {
            "eval_loss": result.loss_sum / n,
            "eval_acc": float(result.confusion.trace()) / n,
            "num-examples": result.num_examples,
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


# ----------------------------------------------------------------------------- ServerApp

server_app = ServerApp()
RESULT: dict[str, Any] = {}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(SEED)  # fedretrain's fresh model: the same initial weights
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=SITES)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(net().state_dict()),
        num_rounds=ROUNDS,
        train_config=ConfigRecord({}),
    )
    RESULT["final_accuracy"] = float(result.evaluate_metrics_clientapp[ROUNDS]["eval_acc"])
    RESULT["rounds"] = len(result.evaluate_metrics_clientapp)


def check_same_start() -> None:
    """Fail unless the initial model is fedretrain's fresh model, weight for weight."""
    torch.manual_seed(SEED)
    ours = model_for(RUN, (1, 8, 8), 10, seed=SEED).state_dict()
    torch.manual_seed(SEED)
    stock = net().state_dict()
    if ours.keys() != stock.keys() or not all(torch.equal(ours[k], stock[k]) for k in ours):
        raise SystemExit("the stock app's initial model differs from fedretrain's")


def run(out: Path) -> None:
    check_same_start()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=SITES)
    out.write_text(json.dumps({**RESULT, "simulation_s": time.perf_counter() - began}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    # Ray's workers find the apps by their module's name, as they find a quickstart's package:
    # this file's, not __main__, and on the path Ray's workers inherit.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    import stock_flower_app

    stock_flower_app.run(out)
    sys.exit(0 if stock_flower_app.RESULT.get("rounds") == ROUNDS else 1)

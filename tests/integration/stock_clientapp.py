"""A ClientApp written with Flower's API only (Flower's quickstart replies, no fedretrain code),
served at the partitions named in ``STOCK_SITES`` beside fedretrain's own at the others: the
simulation of a federation where some sites run a foreign or older app (issue 18, item 2)."""

from __future__ import annotations

import os

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.app import app as ours

stock = ClientApp()


@stock.train()
def stock_train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"]  # sent back as it came
    metrics = MetricRecord({"train_loss": 0.5, "num-examples": 10})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@stock.evaluate()
def stock_evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"eval_loss": 0.4, "eval_acc": 0.8, "num-examples": 10})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


STOCK = {int(s) for s in os.environ.get("STOCK_SITES", "1").split(",")}
app = ClientApp()


def _app_of(context: Context) -> ClientApp:
    return stock if int(str(context.node_config["partition-id"])) in STOCK else ours


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _app_of(context)(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _app_of(context)(msg, context)


@app.query("monitor")
def monitor(msg: Message, context: Context) -> Message:
    return _app_of(context)(msg, context)

"""Replies reach aggregation in an order fixed by their content, not by their arrival."""

from __future__ import annotations

import itertools

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from fedretrain.flower.federation import canonical_order
from fedretrain.flower.records import SITE_ID_KEY


def reply(site: int | None, value: float) -> Message:
    metrics = {"num-examples": 10} if site is None else {"num-examples": 10, SITE_ID_KEY: site}
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.full(3, value, dtype=np.float64))}),
            "metrics": MetricRecord(metrics),
        }
    )
    return Message(content=content, dst_node_id=1, message_type="train")


def names(replies: list[Message]) -> list[tuple[object, float]]:
    out: list[tuple[object, float]] = []
    for r in replies:
        if r.has_error():
            out.append(("error", 0.0))
        else:
            site = r.content.metric_records["metrics"].get(SITE_ID_KEY)
            out.append((site, float(r.content.array_records["arrays"]["w"].numpy()[0])))
    return out


def test_every_arrival_order_aggregates_in_the_same_order() -> None:
    sent = Message(RecordDict(), dst_node_id=1, message_type="train")
    failed = Message(Error(1, "boom"), reply_to=sent)
    replies = [reply(7, 0.1), reply(2, 0.2), reply(None, 0.3), reply(None, 0.4), failed]
    replies += [reply(5, 0.5), reply(5, 0.6)]  # two replies name the same site
    orders = {tuple(names(canonical_order(list(p)))) for p in itertools.permutations(replies)}
    assert len(orders) == 1
    (order,) = orders
    assert order[:2] == ((2, 0.2), (7, 0.1))  # named sites first, by site
    assert order[-1] == ("error", 0.0)
    ties = {order[k] for k in range(2, 6)}  # the rest by the hash of their arrays
    assert ties == {(None, 0.3), (None, 0.4), (5, 0.5), (5, 0.6)}

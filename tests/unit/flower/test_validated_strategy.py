"""The validation wrapper around real Flower strategies, fed real Flower messages."""

import itertools
import logging
import time

import numpy as np
import pytest
from fakes import FakeGrid
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedretrain.aggregation import norm_bounded_mean
from fedretrain.flower.norm_bounded import NormBoundedFedAvg
from fedretrain.flower.records import eval_metrics
from fedretrain.flower.validated import FederationError, Roster, ValidatedStrategy
from fedretrain.metrics import confusion_matrix
from fedretrain.training import EvalResult
from fedretrain.validation import Quorum, Rejection, UpdateRules

GLOBAL = {"w": np.zeros((10,), np.float32), "b": np.zeros((3, 2), np.float32)}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _as_site(node: int) -> None:
    """Messages take their source from the process's identity: act as that site."""
    TaskIdentity.node_id = node


def _reply(node: int, arrays: dict[str, np.ndarray], num_examples: object = 10) -> Message:
    _as_site(node)
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": 0.5})  # type: ignore[dict-item]
    content = RecordDict({"arrays": _record(arrays), "metrics": metrics})
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def _error_reply(node: int) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    _as_site(node)
    return Message(
        Error(code=1, reason="Traceback ...\nRuntimeError: site crashed"), reply_to=request
    )


def _honest(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {k: rng.normal(0, 0.1, v.shape).astype(v.dtype) for k, v in GLOBAL.items()}
        for _ in range(n)
    ]


def _wrapped(inner, rules: UpdateRules, quorum: Quorum | None = None):  # noqa: ANN001, ANN202
    quorum = quorum or Quorum(0.5, 1)
    log: list[Rejection] = []
    strategy = ValidatedStrategy(inner, rules, quorum, node_wait_timeout_s=0.5, record=log.append)
    strategy.configure_train(1, _record(GLOBAL), ConfigRecord(), FakeGrid(list(range(10))))
    return strategy, log


def _malformed(i: int, honest: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], object]:
    """The i-th of ten kinds of bad update."""
    a = {k: v.copy() for k, v in honest.items()}
    n: object = 10
    kind = i % 10
    if kind == 0:
        a["w"][i % 10] = np.nan
    elif kind == 1:
        a["b"][0, 1] = np.inf
    elif kind == 2:
        a["w"] = np.ones(1, np.float32)  # Flower would broadcast this over (10,)
    elif kind == 3:
        a["b"] = a["b"].astype(np.float64)
    elif kind == 4:
        del a["b"]
    elif kind == 5:
        a["extra"] = np.zeros(2, np.float32)
    elif kind == 6:
        n = 10**9  # takes over an unchecked FedAvg
    elif kind == 7:
        n = [0, -5, 2.5, float("nan")][i % 4]
    elif kind == 8:
        a = {k: v * 100 for k, v in a.items()}  # scaled
    else:
        a = {k: -100 * v for k, v in a.items()}  # sign flipped
    return a, n


def test_a_thousand_malformed_updates_are_rejected_and_change_nothing() -> None:
    honest = _honest(10)
    rules = UpdateRules(max_num_examples=10_000, max_update_norm=2.0, max_norm_ratio=None)
    clean, _ = _wrapped(FedAvg(min_available_nodes=1), rules)
    expected, _ = clean.aggregate_train(1, [_reply(i, h) for i, h in enumerate(honest)])

    strategy, log = _wrapped(FedAvg(min_available_nodes=1), rules)
    bad = [_reply(100 + i, *_malformed(i, honest[i % 10])) for i in range(1000)]
    mixed = [
        r
        for pair in itertools.zip_longest(bad, [_reply(i, h) for i, h in enumerate(honest)])
        for r in pair
        if r
    ]
    result, metrics = strategy.aggregate_train(1, mixed)

    assert len(log) == 1000 and {r.node_id for r in log} == set(range(100, 1100))
    for key in GLOBAL:
        np.testing.assert_array_equal(result[key].numpy(), expected[key].numpy())
    assert metrics is not None


def test_unchecked_fedavg_is_broken_by_what_the_wrapper_stops() -> None:
    """The harness bites: without the wrapper one liar or one NaN ruins the average."""
    honest = [_reply(i, h) for i, h in enumerate(_honest(9))]
    liar = _reply(99, {k: np.full_like(v, 5.0) for k, v in GLOBAL.items()}, 10**9)
    nan = _reply(98, {k: np.full_like(v, np.nan) for k, v in GLOBAL.items()})
    plain = FedAvg(min_available_nodes=1)
    taken_over, _ = plain.aggregate_train(1, [*honest, liar])
    assert taken_over["w"].numpy() == pytest.approx(5.0, abs=1e-3)
    poisoned, _ = plain.aggregate_train(1, [*honest, nan])
    assert np.isnan(poisoned["w"].numpy()).all()
    strategy, log = _wrapped(FedAvg(min_available_nodes=1), UpdateRules(max_num_examples=1000))
    result, _ = strategy.aggregate_train(1, [*honest, liar, nan])
    assert np.isfinite(result["w"].numpy()).all() and np.abs(result["w"].numpy()).max() < 1
    assert len(log) == 2


def test_relative_norm_bound_rejects_scaled_updates_of_a_minority() -> None:
    honest = _honest(8, seed=1)
    scaled = [{k: 100 * v for k, v in h.items()} for h in _honest(2, seed=2)]
    strategy, log = _wrapped(FedTrimmedAvg(min_available_nodes=1), UpdateRules(max_norm_ratio=5.0))
    replies = [_reply(i, u) for i, u in enumerate(honest + scaled)]
    strategy.aggregate_train(1, replies)
    assert sorted(r.node_id for r in log) == [8, 9]
    assert all("exceeds the bound" in r.reason for r in log)


def test_failed_sites_are_recorded_and_the_round_goes_on() -> None:
    strategy, log = _wrapped(FedAvg(min_available_nodes=1), UpdateRules())
    replies = [_reply(i, h) for i, h in enumerate(_honest(7))] + [
        _error_reply(i) for i in (7, 8, 9)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert [r.reason for r in log] == ["site failed: RuntimeError: site crashed"] * 3


def test_below_quorum_the_round_is_skipped() -> None:
    strategy, log = _wrapped(FedAvg(min_available_nodes=1), UpdateRules(), Quorum(0.5, 1))
    replies = [_reply(i, h) for i, h in enumerate(_honest(4))] + [
        _error_reply(i) for i in range(4, 10)
    ]
    assert strategy.aggregate_train(1, replies) == (None, None)
    skip = [r for r in log if r.node_id == 0]
    assert len(skip) == 1 and "4 valid replies of 10 sampled, quorum 5" in skip[0].reason


def test_waiting_for_sites_has_a_deadline() -> None:
    strategy = ValidatedStrategy(
        FedAvg(min_available_nodes=5), UpdateRules(), Quorum(), 0.3, record=lambda _: None
    )
    with pytest.raises(FederationError, match="only 2 of 5 sites connected within"):
        strategy.configure_train(1, _record(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))


def test_a_site_that_goes_away_does_not_stall_the_federation() -> None:
    # Issue 18, item 7: a deployed site killed mid-period made every later round wait for
    # all sites (validation.node_wait_timeout_s, an hour in deployment), then end the run.
    strategy = ValidatedStrategy(
        FedAvg(min_available_nodes=3), UpdateRules(), Quorum(), 30.0, record=lambda _: None
    )
    assert (
        len(list(strategy.configure_train(1, _record(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))))
        == 3
    )
    started = time.monotonic()
    gone = list(strategy.configure_train(2, _record(GLOBAL), ConfigRecord(), FakeGrid([1, 3])))
    assert sorted(m.metadata.dst_node_id for m in gone) == [1, 3]  # the two still connected
    assert time.monotonic() - started < 5  # no wait for the missing one
    back = strategy.configure_train(3, _record(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))
    assert len(list(back)) == 3  # asked again once it is back


def test_the_roster_waits_for_every_site_at_the_start_then_for_a_quorum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    roster = Roster(4, Quorum(0.5, 1), timeout_s=0.3)
    with pytest.raises(FederationError, match="only 1 of 4 sites connected"):
        roster.wait(FakeGrid([1]))  # below a quorum: nothing can start
    assert not roster.started
    with caplog.at_level(logging.WARNING, "fedretrain.flower.validated"):
        assert roster.wait(FakeGrid([1, 2])) == [1, 2]  # a quorum, after the deadline
    assert "only 2 of 4 sites connected" in caplog.text and roster.started
    with pytest.raises(FederationError, match="only 1 of 2 sites connected"):
        roster.wait(FakeGrid([1]))  # under way, below a quorum is still an error


def test_malformed_evaluation_statistics_are_not_summed() -> None:
    from fedretrain.flower.records import eval_result, sum_eval_metrics

    inner = FedAvg(min_available_nodes=1, evaluate_metrics_aggr_fn=sum_eval_metrics)
    strategy, log = _wrapped(inner, UpdateRules())
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)

    def reply(node: int, metrics: MetricRecord) -> Message:
        _as_site(node)
        return Message(
            RecordDict({"metrics": metrics}), dst_node_id=node, message_type=MessageType.EVALUATE
        )

    good = eval_metrics(EvalResult(3, 1.5, cm))
    negative = MetricRecord({**good, "confusion": [5, -1, 0, 2]})
    wrong_total = MetricRecord({**good, "num-examples": 300})
    total = eval_result(
        strategy.aggregate_evaluate(1, [reply(1, good), reply(2, negative), reply(3, wrong_total)])
    )
    assert total.num_examples == 3 and total.confusion.tolist() == cm.tolist()
    assert sorted(r.node_id for r in log) == [2, 3]


def test_a_stock_flower_evaluate_reply_is_rejected_not_a_crash() -> None:
    # What Flower's quickstart ClientApp sends back: no confusion matrix to sum. It used to
    # pass validation and crash the server with KeyError: 'num-classes' (issue 18).
    from fedretrain.flower.records import eval_result, sum_eval_metrics

    inner = FedAvg(min_available_nodes=1, evaluate_metrics_aggr_fn=sum_eval_metrics)
    strategy, log = _wrapped(inner, UpdateRules())
    good = eval_metrics(EvalResult(3, 1.5, confusion_matrix(np.array([0, 1, 1]), np.ones(3), 2)))
    stock = MetricRecord({"eval_loss": 0.4, "eval_acc": 0.9, "num-examples": 30})
    replies = []
    for node, metrics in ((1, good), (2, stock)):
        _as_site(node)
        content = RecordDict({"metrics": metrics})
        replies.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE))
    assert eval_result(strategy.aggregate_evaluate(1, replies)).num_examples == 3
    [rejected] = log
    assert rejected.node_id == 2 and "clients.app" in rejected.reason
    assert strategy.aggregate_evaluate(1, replies[1:]) is None  # only stock sites: no score


def test_norm_bounded_fedavg_clips_then_averages() -> None:
    updates = _honest(5, seed=3)
    updates[0] = {k: 1000 * v for k, v in updates[0].items()}
    counts = [10, 20, 30, 40, 50]
    strategy = NormBoundedFedAvg(max_norm=0.5, min_available_nodes=1)
    strategy.configure_train(1, _record(GLOBAL), ConfigRecord(), FakeGrid(list(range(5))))
    arrays, _ = strategy.aggregate_train(
        1, [_reply(i, u, n) for i, (u, n) in enumerate(zip(updates, counts, strict=True))]
    )
    expected = norm_bounded_mean(GLOBAL, updates, counts, 0.5)
    np.testing.assert_allclose(arrays["w"].numpy(), expected["w"], rtol=1e-6)
    # Independent check of the clipped mean with plain numpy.
    flat = [np.concatenate([u["w"], u["b"].ravel()]).astype(np.float64) for u in updates]
    clipped = [f * min(1.0, 0.5 / np.linalg.norm(f)) for f in flat]
    mean = np.average(clipped, axis=0, weights=counts)
    np.testing.assert_allclose(arrays["w"].numpy(), mean[:10], rtol=1e-5, atol=1e-7)


def _site_reply(node: int, arrays: dict[str, np.ndarray]) -> Message:
    _as_site(node)
    metrics = MetricRecord({"num-examples": 10, "train-loss": 0.5, "site-id": node})
    content = RecordDict({"arrays": _record(arrays), "metrics": metrics})
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def test_a_drifted_site_s_large_update_is_clipped_not_rejected() -> None:
    # Sites 8 and 9 moved to another concept: their updates are 100x the others'. Before the
    # fix the 5x-median bound threw them out as attacks; now the monitor's evidence that they
    # drifted makes the bound clip them, and the same update from an undrifted site is still
    # rejected.
    honest = _honest(8, seed=1)
    moved = [{k: 100 * v for k, v in h.items()} for h in _honest(2, seed=2)]
    replies = [_site_reply(i, u) for i, u in enumerate(honest + moved)]
    strategy, log = _wrapped(FedAvg(min_available_nodes=1), UpdateRules(max_norm_ratio=5.0))
    strategy.aggregate_train(1, replies)
    assert sorted(r.node_id for r in log) == [8, 9]

    strategy, log = _wrapped(FedAvg(min_available_nodes=1), UpdateRules(max_norm_ratio=5.0))
    strategy.drifted = frozenset({8, 9})
    result, _ = strategy.aggregate_train(1, replies)
    assert log == []
    norms = [np.sqrt(sum(float((v**2).sum()) for v in u.values())) for u in honest + moved]
    bound = 5.0 * float(np.median(norms))
    updates = honest + moved
    clipped = [
        {k: v * min(1.0, bound / n) for k, v in u.items()}
        for u, n in zip(updates, norms, strict=True)
    ]
    for key in GLOBAL:  # FedAvg of equal weights: the mean of the clipped updates
        expected = np.mean([u[key] for u in clipped], axis=0)
        np.testing.assert_allclose(result[key].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_a_stock_reply_first_in_the_round_does_not_set_the_metric_keys() -> None:
    # Issue 18, item 2: the first reply's keys were the round's reference, so one stock
    # Flower site (train_loss, num-examples) got every fedretrain site rejected.
    strategy, log = _wrapped(FedAvg(min_available_nodes=1), UpdateRules(), Quorum(0.1, 1))
    updates = _honest(3)
    _as_site(9)
    stock_metrics = MetricRecord({"num-examples": 10, "train_loss": 0.5})
    stock = Message(
        content=RecordDict({"arrays": _record(updates[0]), "metrics": stock_metrics}),
        dst_node_id=9,
        message_type=MessageType.TRAIN,
    )
    ours = [_reply(node, update) for node, update in zip((1, 2), updates[1:], strict=True)]
    arrays, _ = strategy.aggregate_train(1, [stock, *ours])
    assert arrays is not None
    [rejection] = log
    assert rejection.node_id == 9 and rejection.reason.startswith("the reply lacks train-loss")

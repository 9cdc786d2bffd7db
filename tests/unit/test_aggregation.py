"""The configured Flower strategies aggregate what our sites send as numpy says they should."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from scipy.stats import trim_mean
from sklearn.metrics import precision_recall_fscore_support

from fedretrain.config import compose
from fedretrain.flower.records import eval_metrics, eval_result, sum_eval_metrics
from fedretrain.flower.strategies import build_strategy
from fedretrain.metrics import confusion_matrix, scores
from fedretrain.preflight import to_typed
from fedretrain.training import EvalResult


@pytest.fixture(autouse=True)
def task_identity() -> None:
    # Building a Message outside a running federation needs an identity (FACTS.md).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def _replies(updates: list[dict[str, np.ndarray]], counts: list[int]) -> list[Message]:
    return [
        Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in update.items()}),
                    "metrics": MetricRecord({"num-examples": n, "train-loss": float(i)}),
                }
            ),
            dst_node_id=i + 10,
            message_type=MessageType.TRAIN,
        )
        for i, (update, n) in enumerate(zip(updates, counts, strict=True))
    ]


def _updates(n_sites: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32),
        }
        for _ in range(n_sites)
    ]


def _strategy(name: str, *extra: str):  # noqa: ANN202
    overrides = [f"strategy={name}", "runtime.num_clients=7", "validation=off", *extra]
    return build_strategy(to_typed(compose(overrides)))


def _aggregate(strategy, updates, counts) -> dict[str, np.ndarray]:  # noqa: ANN001
    arrays, _ = strategy.aggregate_train(1, _replies(updates, counts))
    return {k: v.numpy() for k, v in arrays.items()}


def test_fedavg_is_the_sample_weighted_mean() -> None:
    updates, counts = _updates(7, 0), [10, 200, 35, 1, 80, 80, 5]
    result = _aggregate(_strategy("fedavg"), updates, counts)
    for key in ("w", "b"):
        expected = np.average(np.stack([u[key] for u in updates]), axis=0, weights=counts)
        np.testing.assert_allclose(result[key], expected, rtol=1e-5, atol=1e-6)


def test_fedavg_of_identical_updates_is_the_identity() -> None:
    same = _updates(1, 1) * 5
    result = _aggregate(_strategy("fedavg"), same, [3, 1, 4, 1, 5])
    np.testing.assert_allclose(result["w"], same[0]["w"], rtol=1e-6)


def test_fedmedian_is_the_coordinatewise_median() -> None:
    updates = _updates(7, 2)
    result = _aggregate(_strategy("fedmedian"), updates, [1] * 7)
    np.testing.assert_allclose(
        result["w"], np.median(np.stack([u["w"] for u in updates]), axis=0), rtol=1e-6
    )


def test_fedtrimmedavg_is_scipys_trimmed_mean() -> None:
    updates = _updates(7, 3)
    result = _aggregate(_strategy("fedtrimmedavg", "strategy.beta=0.2"), updates, [1] * 7)
    expected = trim_mean(np.stack([u["w"] for u in updates]), 0.2, axis=0)
    np.testing.assert_allclose(result["w"], expected, rtol=1e-5)


def test_krum_picks_the_update_closest_to_its_neighbours_not_the_outlier() -> None:
    updates = _updates(7, 4)
    for u in updates:  # six updates near zero, one far away
        u["w"] *= 0.01
        u["b"] *= 0.01
    updates[3]["w"] = np.full_like(updates[3]["w"], 50.0)
    result = _aggregate(_strategy("krum", "strategy.num_malicious_nodes=1"), updates, [1] * 7)
    flat = np.stack([np.concatenate([u["w"].ravel(), u["b"]]) for u in updates]).astype(np.float64)
    # Krum's score: sum of squared distances to the n - f - 2 nearest other updates.
    dists = ((flat[:, None] - flat[None]) ** 2).sum(axis=2)
    k = 7 - 1 - 2
    krum_scores = [np.sort(np.delete(row, i))[:k].sum() for i, row in enumerate(dists)]
    chosen = int(np.argmin(krum_scores))
    assert chosen != 3
    np.testing.assert_allclose(result["w"], updates[chosen]["w"])


def test_summed_evaluation_equals_pooled_sklearn_scores() -> None:
    rng = np.random.default_rng(5)
    sites = [(rng.integers(0, 4, n), rng.integers(0, 4, n)) for n in (3, 40, 400)]
    replies = [
        RecordDict(
            {
                "metrics": eval_metrics(
                    EvalResult(len(t), float(len(t)) * 0.5, confusion_matrix(t, p, 4))
                )
            }
        )
        for t, p in sites
    ]
    total = eval_result(sum_eval_metrics(replies, "num-examples"))
    y_true = np.concatenate([t for t, _ in sites])
    y_pred = np.concatenate([p for _, p in sites])
    _, _, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert total.num_examples == len(y_true)
    assert total.loss_sum == pytest.approx(0.5 * len(y_true))
    assert scores(total.confusion).f1 == pytest.approx(f1)

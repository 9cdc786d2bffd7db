"""Window statistics: summable, equal to numpy on the pooled data, and malformed ones caught."""

from __future__ import annotations

import numpy as np
import pytest

from fedretrain.monitor.stats import (
    HistogramEdges,
    PeriodStats,
    WindowStats,
    stats_problem,
    sum_stats,
    window_stats,
)

FEATURES, BINS, CLASSES = 3, 6, 4


def _window(rng: np.random.Generator, n: int, edges: HistogramEdges) -> tuple:
    x = rng.normal(size=(n, FEATURES))
    y = rng.integers(0, CLASSES, size=n)
    logits = rng.normal(size=(n, CLASSES))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    losses = -np.log(probs[np.arange(n), y])
    return x, y, probs, losses, window_stats(x, y, probs, losses, edges)


def test_sites_sum_to_the_statistics_of_the_pooled_data() -> None:
    rng = np.random.default_rng(0)
    edges = HistogramEdges.from_moments(100, np.zeros(FEATURES), np.full(FEATURES, 100.0), BINS)
    windows = [_window(rng, n, edges) for n in (17, 40, 3)]
    total = sum_stats(w[-1] for w in windows)
    x = np.concatenate([w[0] for w in windows])
    y = np.concatenate([w[1] for w in windows])
    probs = np.concatenate([w[2] for w in windows])
    losses = np.concatenate([w[3] for w in windows])
    pred = probs.argmax(axis=1)
    assert total.n == len(x)
    np.testing.assert_allclose(total.x_sum, x.sum(axis=0))
    np.testing.assert_allclose(total.x_sq_sum, (x**2).sum(axis=0))
    for f in range(FEATURES):  # numpy's histogram on the same edges, outer bins open
        inner = np.histogram(x[:, f], bins=[-np.inf, *edges.interior[f], np.inf])[0]
        np.testing.assert_array_equal(total.hist[f], inner)
    np.testing.assert_array_equal(total.label_counts, np.bincount(y, minlength=CLASSES))
    np.testing.assert_array_equal(total.pred_counts, np.bincount(pred, minlength=CLASSES))
    assert total.errors == int((pred != y).sum())
    assert total.accuracy == pytest.approx(float((pred == y).mean()))
    assert total.loss_sum == pytest.approx(losses.sum())
    assert total.maxprob_sum == pytest.approx(probs.max(axis=1).sum())
    assert PeriodStats(1, {i: w[-1] for i, w in enumerate(windows)}).total.n == len(x)


def test_edges_from_moments_span_the_reference_data() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, size=(5000, 2))
    edges = HistogramEdges.from_moments(len(x), x.sum(axis=0), (x**2).sum(axis=0), bins=8)
    counts = edges.counts(x)
    assert counts.shape == (2, 8)
    assert (counts.sum(axis=1) == len(x)).all()
    assert (counts > 0).all()  # every bin holds data: edges sit where the data lies


def test_round_trip_through_arrays() -> None:
    rng = np.random.default_rng(2)
    edges = HistogramEdges.from_moments(10, np.zeros(FEATURES), np.full(FEATURES, 10.0), BINS)
    stats = _window(rng, 25, edges)[-1]
    back = WindowStats.from_arrays(stats.to_arrays())
    assert back.n == stats.n and back.loss_sum == stats.loss_sum
    np.testing.assert_array_equal(back.hist, stats.hist)
    np.testing.assert_array_equal(back.confusion, stats.confusion)


def _broken(stats: WindowStats, **changes: object) -> WindowStats:
    arrays = stats.to_arrays()
    arrays.update({k: np.asarray(v) for k, v in changes.items()})
    return WindowStats.from_arrays(arrays)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hist": np.full((FEATURES, BINS), -1)}, "hist has shape"),
        ({"x_sum": np.array([1.0, np.nan, 0.0])}, "x_sum has non-finite values"),
        ({"x_sum": np.ones(FEATURES + 1)}, "x_sum has shape"),
        ({"loss_sum": np.inf}, "loss_sum is not finite"),
        ({"loss_sum": -1.0}, "loss_sum=-1.0 is negative"),
        ({"n": -5}, "n=-5 is negative"),
        ({"label_counts": np.array([-1, 0, 0, 1])}, "label_counts has negative counts"),
        ({"pred_counts": np.array([0.5, 0, 0, 0])}, "pred_counts has fractional counts"),
        ({"maxprob_sum": 1e9}, "exceeds n"),
        ({"confusion": np.eye(CLASSES, dtype=np.int64) * 1000}, "more than n"),
    ],
)
def test_malformed_statistics_are_named(change: dict, expected: str) -> None:
    rng = np.random.default_rng(3)
    edges = HistogramEdges.from_moments(10, np.zeros(FEATURES), np.full(FEATURES, 10.0), BINS)
    good = _window(rng, 30, edges)[-1]
    assert stats_problem(good, FEATURES, BINS, CLASSES) is None
    if "hist" in change:  # right shape, negative counts
        bad = _broken(good, hist=good.hist.copy() * 0 - 1)
        assert "negative counts" in (stats_problem(bad, FEATURES, BINS, CLASSES) or "")
        bad = _broken(good, hist=np.zeros((FEATURES, BINS + 1)))
    else:
        bad = _broken(good, **change)
    problem = stats_problem(bad, FEATURES, BINS, CLASSES)
    assert problem is not None and expected in problem


def test_adding_mismatched_statistics_fails_loudly() -> None:
    with pytest.raises(ValueError, match="hist shapes"):
        WindowStats.zeros(2, 3, 2) + WindowStats.zeros(2, 4, 2)


def test_unlabelled_window_counts_predictions_only() -> None:
    edges = HistogramEdges(np.zeros((1, 0)))  # one bin: no histogram yet
    probs = np.array([[0.7, 0.3], [0.1, 0.9]])
    stats = window_stats(np.zeros((2, 1)), None, probs, None, edges)
    assert stats.labelled == 0 and np.isnan(stats.accuracy)
    assert stats.pred_counts.tolist() == [1, 1]
    assert stats_problem(stats, 1, 1, 2) is None

"""A synthetic federation for the detector tests and their Monte Carlo calibration.

Each site draws ``n`` samples a period: labels of two balanced classes, a prediction that is
wrong with the site's error rate, and three features: ``x0 ~ U[0, 10]`` (optionally shifted by
the monotone ``x -> 10 (x / 10)^2``), ``x1 ~ N(0, 1)``, and ``x2`` constant. Statistics come from
the production :func:`~fedretrain.monitor.stats.window_stats` on shared edges.

For Monte Carlo, :func:`fast_period` draws the counts directly (a confusion matrix and one
multinomial histogram): the same distributions under no drift, a hundred times cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from fedretrain.monitor.base import Detector
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats, window_stats


def draw_features(rng: np.random.Generator, n: int, shifted: bool = False) -> np.ndarray:
    x0 = rng.uniform(0.0, 10.0, n)
    if shifted:
        x0 = 10.0 * (x0 / 10.0) ** 2
    return np.column_stack([x0, rng.standard_normal(n), np.ones(n)])


@dataclass(frozen=True)
class Federation:
    """``sites`` sites of ``n`` samples a period with error rate ``error`` unless told otherwise."""

    sites: int = 10
    n: int = 100
    error: float = 0.1
    bins: int = 8

    def edges(self) -> HistogramEdges:
        """Edges the server would set from a large first window (fixed sample, seeded)."""
        x = draw_features(np.random.default_rng(12345), 20_000)
        return HistogramEdges.from_moments(len(x), x.sum(0), (x**2).sum(0), bins=self.bins)

    def window(
        self, rng: np.random.Generator, edges: HistogramEdges, error: float, shifted: bool
    ) -> WindowStats:
        x = draw_features(rng, self.n, shifted)
        y = rng.integers(0, 2, self.n)
        pred = np.where(rng.random(self.n) < error, 1 - y, y)
        probs = np.where(pred[:, None] == np.arange(2), 0.8, 0.2)
        losses = -np.log(probs[np.arange(self.n), y])
        return window_stats(x, y, probs, losses, edges)

    def period(
        self,
        rng: np.random.Generator,
        edges: HistogramEdges,
        t: int = 0,
        errors: Mapping[int, float] | None = None,
        shifted: Collection[int] = (),
    ) -> PeriodStats:
        """One period; ``errors`` overrides some sites' error rates, ``shifted`` shifts x0."""
        errors = errors or {}
        windows = {
            s: self.window(rng, edges, errors.get(s, self.error), s in shifted)
            for s in range(self.sites)
        }
        return PeriodStats(t, windows)


def fast_period(
    rng: np.random.Generator,
    t: int,
    sites: int = 10,
    n: int = 100,
    error: float = 0.1,
    bin_probs: tuple[float, ...] = (0.05, 0.15, 0.3, 0.3, 0.15, 0.05),
    features: int = 2,
) -> PeriodStats:
    """A stationary period drawn as counts: errors ~ Binomial(n, error), histograms multinomial."""
    out = {}
    for s in range(sites):
        errors = int(rng.binomial(n, error))
        confusion = np.array([[n - errors, errors], [0, 0]])
        hist = rng.multinomial(n, bin_probs, size=features)
        out[s] = WindowStats(
            n,
            np.zeros(features),
            np.zeros(features),
            hist,
            confusion.sum(1),
            confusion.sum(0),
            confusion,
            0.0,
            0.0,
        )
    return PeriodStats(t, out)


StreamFactory = Callable[..., list[PeriodStats]]


def false_alarm_rate(
    detector: Detector,
    draw: Callable[[np.random.Generator, int], PeriodStats],
    runs: int,
    per_run: int,
    seed: int,
    reference: int,
) -> float:
    """Monte Carlo: the share of tested periods (after ``reference``) with an alarm, over
    ``runs`` runs of ``per_run`` stationary periods from ``draw(rng, t)``, each run begun with
    a reset detector (a fresh reference, as after a retrain)."""
    rng = np.random.default_rng(seed)
    alarms = tested = 0
    for _ in range(runs):
        detector.reset()
        for t in range(per_run):
            detector.update(draw(rng, t))
            if t >= reference:
                tested += 1
                alarms += detector.drift_detected
    return alarms / tested

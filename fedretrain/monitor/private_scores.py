"""Private per-model scores: what a clustered site says about the models it does not serve.

Under ``adaptation=clustered`` a site scores every live model on its period's window and sends
one row (cluster, correct, examples) per model (``clients.app``). With
``privacy.stats_noise_multiplier`` (σ) set, the rows are released with the Gaussian mechanism
of :mod:`fedretrain.monitor.private`, as one more block beside the statistics' seven.

Sensitivity, to adding or removing one record of the window (the neighbours of
:mod:`fedretrain.monitor.private`):

- a model's ``correct`` count changes by at most 1 (the record counts only if that model
  predicts its label), so the counts of the ``k`` models the site does not serve move by at
  most 1 each: L2 sensitivity √k, as one record moves one count in each of a histogram's ``d``
  rows (√d);
- the served model's count is the trace of the confusion matrix, and ``examples`` is the
  window's ``n``: both are released with the statistics already, so their rows are taken from
  the noisy statistics (post-processing, no new privacy cost);
- no per-model loss sums are sent (were they, a clipped loss bounds each by
  ``stats_loss_bound``, L per record, as the statistics' ``loss_sum``).

Each of the ``k`` counts gets N(0, (σ √k)²) noise: one Gaussian mechanism of multiplier σ with
no sampling (``SampledGaussian(σ, 1, 1)``, :meth:`~fedretrain.monitor.private.StatsMechanism.
scores_release`). The noisy counts are then rounded and clipped to ``[0, n]`` (post-processing,
free), because the server takes only whole counts within the window
(:func:`fedretrain.flower.records.model_scores_problem`). Rounding keeps a count unbiased (the
noise is symmetric about a whole number); clipping pulls counts near 0 or ``n`` inwards, which
only a window of a few records notices.

Accounting: under DP-SGD each period's scores are an entry of the site's ledger of their own,
recorded before they leave the site (``clients.app``); without DP-SGD the ε reported apart
(:func:`~fedretrain.monitor.private.stats_epsilon`) counts one such release in every period
after the first (period 0 serves one model and sends no scores): an upper bound, since a
period with a single live model releases nothing beyond its statistics.

>>> from fedretrain.monitor.stats import WindowStats
>>> sent = WindowStats(n=10, x_sum=np.zeros(1), x_sq_sum=np.zeros(1), hist=np.zeros((1, 2)),
...     label_counts=np.array([5.0, 5.0]), pred_counts=np.array([5.0, 5.0]),
...     confusion=np.array([[4.2, 0.8], [1.1, 3.9]]), loss_sum=1.0, maxprob_sum=8.0)
>>> exact = np.array([[0, 8, 10], [1, 3, 10], [2, 10, 10]])
>>> privatize_scores(exact, served=0, sent=sent, noise_multiplier=1.0,
...                  rng=np.random.default_rng(0)).tolist()
[[0, 8, 10], [1, 3, 10], [2, 10, 10]]
"""

from __future__ import annotations

import math

import numpy as np

from fedretrain.monitor.stats import WindowStats


def scores_sensitivity(others: int) -> float:
    """L2 sensitivity of the correct counts of ``others`` models to one record: √others.

    >>> scores_sensitivity(4)
    2.0
    """
    return math.sqrt(others)


def score_count_sd(noise_multiplier: float, num_classes: int, live_models: int) -> float:
    """The noise standard deviation of one window's correct count as the server receives it:
    the larger of the served row's (the trace of the noisy confusion matrix: σ √C) and an
    unserved row's (σ √k for the k = ``live_models`` - 1 others). The clusters' drift tests
    widen by it (:func:`~fedretrain.retraining.clusters.worse_by`).

    >>> score_count_sd(5.0, num_classes=2, live_models=5)
    10.0
    >>> score_count_sd(0.0, num_classes=10, live_models=3)
    0.0
    """
    return noise_multiplier * math.sqrt(max(num_classes, live_models - 1, 0))


def privatize_scores(
    exact: np.ndarray,
    served: int,
    sent: WindowStats,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The rows a private site sends: ``exact`` (cluster, correct, examples) with noise.

    Parameters
    ----------
    exact : np.ndarray
        One whole-number row per live model, as the site counted them on its window.
    served : int
        The cluster whose model the site serves: its row is read from ``sent``.
    sent : WindowStats
        The statistics the site releases this period (noisy), from which the served row and
        every row's ``examples`` are derived.
    noise_multiplier : float
        σ; 0 returns ``exact`` unchanged.
    rng : np.random.Generator
        The noise's source.
    """
    exact = np.asarray(exact, dtype=np.int64).reshape(-1, 3)
    if noise_multiplier == 0:
        return exact
    others = exact[:, 0] != served
    scale = noise_multiplier * scores_sensitivity(int(others.sum()))
    correct = exact[:, 1].astype(np.float64)
    correct[others] += rng.normal(0.0, scale, int(others.sum()))
    correct[~others] = float(np.trace(np.asarray(sent.confusion)))
    window = max(int(sent.n), 0)
    out = exact.copy()
    out[:, 1] = np.clip(np.rint(correct), 0, window).astype(np.int64)
    out[:, 2] = int(sent.n)
    return out

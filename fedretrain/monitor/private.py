"""Private monitoring statistics: the Gaussian mechanism on a site's window statistics.

With ``privacy.stats_noise_multiplier`` (σ) set, a site adds Gaussian noise to its
:class:`~fedretrain.monitor.stats.WindowStats` before they leave it, so that each monitoring
period is differentially private for the records of its window (add/remove-one neighbours).

What is released, and each block's L2 sensitivity Δ to one record (``d`` features):

=============  =========  ==================================================================
block          Δ          why
=============  =========  ==================================================================
hist           √d         a record adds one count to one bin of each feature's histogram
pred_counts    1          one predicted class
confusion      1          one cell, and only if labelled
x_sum          B √d       features clipped to [-B, B] (``stats_feature_bound``) for the sums
x_sq_sum       B² √d      the same clipped features, squared
loss_sum       L          per-record loss clipped to [0, L] (``stats_loss_bound``)
maxprob_sum    1          a probability
=============  =========  ==================================================================

Each block gets independent N(0, (σ Δ)²) noise on every entry, as floats (nothing is rounded or
clipped, so the server's sums stay unbiased). ``n`` and ``label_counts`` are not released on
their own: they are derived from the noisy blocks (``n`` is the rounded sum of the prediction
counts, unbiased because the true sum is whole and the noise symmetric; ``label_counts`` are
the confusion matrix's row sums), post-processing that costs no privacy. The histograms count
the raw values (their open outer bins need no clipping); only the sums of x and x² use clipped
ones, so a feature beyond B makes those sums biased, never the privacy weaker.

Accounting. Seven Gaussian mechanisms, each with noise multiplier σ on its own sensitivity,
compose (in RDP) to one Gaussian mechanism of multiplier σ / √7 per period, with no sampling
(``sample_rate = 1`` in :mod:`fedretrain.privacy.rdp`). ε over ``T`` periods composes all of
them, as if each record stayed in every window; sites whose windows never share a record could
claim a single period's ε (parallel composition), which this does not. It is reported apart from
DP-SGD's ε, at the same ``privacy.delta``. Under ``adaptation=clustered`` a site also sends
its per-model scores each period, one more Gaussian mechanism of multiplier σ
(:mod:`fedretrain.monitor.private_scores`).

The server knows σ and the sensitivities, so it knows the variance of the noise on every count
it reads (:func:`count_noise_variance`), and the detectors widen their null distributions by
it: see ``stats_noise_std`` in :mod:`fedretrain.monitor.histogram`,
:mod:`fedretrain.monitor.binomial_error` and :mod:`fedretrain.monitor.sequential`.

>>> import numpy as np
>>> from fedretrain.monitor.stats import HistogramEdges
>>> mechanism = StatsMechanism(noise_multiplier=2.0, feature_bound=1.0, loss_bound=5.0)
>>> edges = HistogramEdges(np.array([[0.0], [0.0]]))
>>> x = np.array([[0.5, -3.0], [-0.2, 0.1]])
>>> exact = mechanism.window_stats(x, np.array([0, 1]), np.array([[0.9, 0.1], [0.3, 0.7]]),
...                                np.array([0.1, 0.4]), edges)
>>> exact.x_sum.tolist()  # -3.0 clipped to -1.0
[0.3, -0.9]
>>> sent = mechanism.privatize(exact, np.random.default_rng(0))
>>> sent.hist.round(1).tolist()  # 2 features: noise sd 2 * sqrt(2) on each count
[[1.4, 0.6], [2.8, 1.3]]
>>> round(mechanism.epsilon(periods=1, delta=1e-5), 2)  # one period
6.54
>>> round(StatsMechanism(10.0, 1.0, 5.0).epsilon(periods=100, delta=1e-5), 2)
15.18
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fedretrain.monitor.stats import (
    HistogramEdges,
    WindowStats,
    as_rows,
    shape_problem,
    stats_problem,
)
from fedretrain.monitor.stats import window_stats as exact_window_stats
from fedretrain.privacy.config import PrivacyConfig
from fedretrain.privacy.rdp import SampledGaussian, epsilon

# The blocks a private site sends with noise; every other field is derived from them.
RELEASED = ("hist", "pred_counts", "confusion", "x_sum", "x_sq_sum", "loss_sum", "maxprob_sum")

# Noisy statistics beyond this many noise standard deviations from sound ones are refused.
REJECT_SD = 6.0


def sensitivity(num_features: int, feature_bound: float, loss_bound: float) -> dict[str, float]:
    """Each released block's L2 sensitivity to adding or removing one record.

    >>> sensitivity(4, feature_bound=3.0, loss_bound=10.0)["x_sq_sum"]
    18.0
    """
    root = math.sqrt(num_features)
    return {
        "hist": root,
        "pred_counts": 1.0,
        "confusion": 1.0,
        "x_sum": feature_bound * root,
        "x_sq_sum": feature_bound**2 * root,
        "loss_sum": float(loss_bound),
        "maxprob_sum": 1.0,
    }


def released(stats: WindowStats) -> dict[str, np.ndarray]:
    """The released blocks of ``stats`` as float arrays (scalars as 0-d arrays)."""
    return {name: np.asarray(getattr(stats, name), dtype=np.float64) for name in RELEASED}


def bounded_window_stats(
    x: np.ndarray,
    y: np.ndarray | None,
    probs: np.ndarray,
    losses: np.ndarray | None,
    edges: HistogramEdges,
    feature_bound: float,
    loss_bound: float,
) -> WindowStats:
    """:func:`~fedretrain.monitor.stats.window_stats` with the clipping that bounds each
    record's contribution: features clipped to ``[-feature_bound, feature_bound]`` in the sums of
    x and x², losses to ``[0, loss_bound]``. Exact statistics, ready for :func:`privatize`."""
    flat = as_rows(x)
    clipped = np.clip(flat, -feature_bound, feature_bound)
    bounded_losses = None if losses is None else np.clip(losses, 0.0, loss_bound)
    stats = exact_window_stats(flat, y, probs, bounded_losses, edges)
    return replace(stats, x_sum=clipped.sum(axis=0), x_sq_sum=(clipped**2).sum(axis=0))


def privatize(
    stats: WindowStats,
    noise_multiplier: float,
    rng: np.random.Generator,
    feature_bound: float,
    loss_bound: float,
) -> WindowStats:
    """The Gaussian mechanism: every released block plus N(0, (σ Δ)²) noise per entry.

    ``stats`` must come from :func:`bounded_window_stats` with the same bounds (or sums of such),
    or the sensitivities do not hold. σ = 0 returns ``stats`` unchanged (no privacy).
    """
    if noise_multiplier == 0:
        return stats
    if not (math.isfinite(feature_bound) and math.isfinite(loss_bound)):
        raise ValueError("noise needs finite feature and loss bounds (the sums' sensitivity)")
    deltas = sensitivity(len(np.asarray(stats.x_sum)), feature_bound, loss_bound)
    noisy = {
        name: value + rng.normal(0.0, noise_multiplier * deltas[name], value.shape)
        for name, value in released(stats).items()
    }
    return WindowStats(
        n=int(np.rint(noisy["pred_counts"].sum())),
        x_sum=noisy["x_sum"],
        x_sq_sum=noisy["x_sq_sum"],
        hist=noisy["hist"],
        label_counts=noisy["confusion"].sum(axis=1),
        pred_counts=noisy["pred_counts"],
        confusion=noisy["confusion"],
        loss_sum=float(noisy["loss_sum"]),
        maxprob_sum=float(noisy["maxprob_sum"]),
    )


def count_noise_variance(
    field: str, noise_std: float, num_features: int = 1, num_classes: int = 1
) -> float:
    """Variance of the noise on one count of ``field`` in one privatized report.

    ``noise_std`` is σ, the noise standard deviation of a block of sensitivity 1 (what the
    detectors receive as ``stats_noise_std``). Derived counts sum several noisy entries:
    a label count sums a confusion row, ``errors`` the off-diagonal, ``correct`` the diagonal.

    >>> count_noise_variance("hist", 2.0, num_features=3)
    12.0
    >>> count_noise_variance("errors", 1.0, num_classes=3)
    6.0
    """
    entries = {
        "hist": num_features,
        "pred_counts": 1,
        "confusion": 1,
        "label_counts": num_classes,
        "n": num_classes,
        "errors": num_classes * num_classes - num_classes,
        "correct": num_classes,
        "labelled": num_classes * num_classes,
    }
    if field not in entries:
        raise ValueError(f"field={field!r}: noise variance known for {sorted(entries)}")
    return float(noise_std) ** 2 * entries[field]


@dataclass(frozen=True)
class StatsMechanism:
    """How a site releases its statistics: σ and the clipping bounds (σ = 0: exact, no noise).

    Parameters
    ----------
    noise_multiplier : float
        σ; each released block gets noise of σ times its sensitivity. 0 turns the mechanism off.
    feature_bound : float
        B, the clip of features in the sums of x and x².
    loss_bound : float
        L, the clip of per-record losses.
    """

    noise_multiplier: float = 0.0
    feature_bound: float = math.inf
    loss_bound: float = math.inf

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier={self.noise_multiplier}: must be finite, >= 0")
        if self.noise_multiplier > 0:
            for name in ("feature_bound", "loss_bound"):
                value = getattr(self, name)
                if not (value > 0 and math.isfinite(value)):
                    raise ValueError(f"{name}={value}: noise needs a finite positive bound")

    @classmethod
    def from_config(cls, privacy: PrivacyConfig) -> StatsMechanism:
        """The mechanism ``privacy`` asks for; off when ``stats_noise_multiplier`` is null."""
        if privacy.stats_noise_multiplier is None:
            return cls()
        if privacy.stats_feature_bound is None:  # the config's cross-checks insist on one
            raise ValueError(
                "privacy.stats_noise_multiplier is set but no feature bound is known: set "
                "privacy.stats_feature_bound (or task.feature_bound)"
            )
        return cls(
            privacy.stats_noise_multiplier, privacy.stats_feature_bound, privacy.stats_loss_bound
        )

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    def window_stats(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        probs: np.ndarray,
        losses: np.ndarray | None,
        edges: HistogramEdges,
    ) -> WindowStats:
        """Exact statistics of one window, clipped where the mechanism needs it."""
        if not self.enabled:
            return exact_window_stats(x, y, probs, losses, edges)
        return bounded_window_stats(x, y, probs, losses, edges, self.feature_bound, self.loss_bound)

    def privatize(self, stats: WindowStats, rng: np.random.Generator) -> WindowStats:
        """What the site sends: :func:`privatize` (``stats`` itself when off)."""
        return privatize(stats, self.noise_multiplier, rng, self.feature_bound, self.loss_bound)

    def per_period(self) -> SampledGaussian:
        """One period's release as one Gaussian mechanism: multiplier σ / √blocks, no sampling."""
        return SampledGaussian(self.noise_multiplier / math.sqrt(len(RELEASED)), 1.0, 1)

    def scores_release(self) -> SampledGaussian:
        """One period's per-model scores (``adaptation=clustered``) as one Gaussian mechanism:
        multiplier σ on their sensitivity, no sampling (:mod:`fedretrain.monitor.
        private_scores`)."""
        return SampledGaussian(self.noise_multiplier, 1.0, 1)

    def epsilon(self, periods: int, delta: float, scored_periods: int = 0) -> float:
        """ε at ``delta`` of ``periods`` releases (RDP composition), and of per-model scores
        in ``scored_periods`` of them; inf when off."""
        if not self.enabled:
            return math.inf
        released = [replace(self.per_period(), steps=periods)]
        if scored_periods:
            released.append(replace(self.scores_release(), steps=scored_periods))
        return epsilon(released, delta)

    def problem(
        self, stats: WindowStats, num_features: int, bins: int, num_classes: int
    ) -> str | None:
        """Why a site's statistics must not be summed, or None (see :func:`check_stats`)."""
        if not self.enabled:
            return stats_problem(stats, num_features, bins, num_classes)
        return noisy_stats_problem(stats, num_features, bins, num_classes, self)


def noisy_stats_problem(
    stats: WindowStats, num_features: int, bins: int, num_classes: int, mechanism: StatsMechanism
) -> str | None:
    """:func:`~fedretrain.monitor.stats.stats_problem` for noisy statistics.

    Noise makes counts fractional, sometimes negative, and breaks the exact identities between
    them, so those checks allow :data:`REJECT_SD` noise standard deviations; the derived fields
    must match exactly, as :func:`privatize` derives them. Counts far below zero, or histogram
    rows far from ``n``, still betray corrupted statistics.
    """
    problem = shape_problem(stats, num_features, bins, num_classes)
    if problem is not None:
        return problem
    sigma, z = mechanism.noise_multiplier, REJECT_SD
    deltas = sensitivity(num_features, mechanism.feature_bound, mechanism.loss_bound)
    sd = {k: sigma * v for k, v in deltas.items()}
    pred, confusion = np.asarray(stats.pred_counts), np.asarray(stats.confusion)
    if abs(stats.n - float(pred.sum())) > 1:
        return f"n={stats.n} is not the rounded sum of pred_counts ({float(pred.sum()):.1f})"
    if not np.allclose(stats.label_counts, confusion.sum(axis=1), rtol=1e-9, atol=1e-6):
        return "label_counts are not the confusion matrix's row sums"
    for name in ("hist", "pred_counts", "confusion", "x_sq_sum", "loss_sum", "maxprob_sum"):
        low = float(np.min(np.asarray(getattr(stats, name)), initial=0.0))
        if low < -z * sd[name]:
            return f"{name} has values down to {low:.4g}, beyond {z:g} noise sd ({sd[name]:.3g})"
    if num_features:
        rows = np.asarray(stats.hist).sum(axis=1)
        row_sd = math.sqrt(bins * sd["hist"] ** 2 + num_classes * sigma**2)
        if (np.abs(rows - stats.n) > z * row_sd).any():
            return f"hist rows sum to {rows.min():.1f}..{rows.max():.1f}, far from n={stats.n}"
    n_sd = math.sqrt(num_classes) * sigma
    if stats.maxprob_sum > stats.n + z * math.hypot(n_sd, sd["maxprob_sum"]):
        return f"maxprob_sum={stats.maxprob_sum:.1f} exceeds n={stats.n} beyond the noise"
    labelled = float(confusion.sum())
    if labelled > stats.n + z * math.hypot(n_sd, num_classes * sigma):
        return f"the confusion matrix counts {labelled:.1f} samples, beyond n={stats.n}"
    return None


# ----------------------------------------------------------------------------- the controller


def noise_std_for(privacy: PrivacyConfig) -> float:
    """What the detectors receive as ``stats_noise_std``: σ, or 0 for exact statistics."""
    return privacy.stats_noise_multiplier or 0.0


def stats_epsilon(privacy: PrivacyConfig, periods: int, scored_periods: int = 0) -> float | None:
    """ε at ``privacy.delta`` of ``periods`` private monitoring releases of a site, reported
    apart from any other, with per-model scores (``adaptation=clustered``) in
    ``scored_periods`` of them: None when the statistics are exact (there is no guarantee to
    report) or under DP-SGD, whose ledgers record each release (:func:`ledgered`)."""
    mechanism = StatsMechanism.from_config(privacy)
    if not mechanism.enabled or ledgered(privacy):
        return None
    return mechanism.epsilon(periods, privacy.delta, scored_periods)


def ledgered(privacy: PrivacyConfig) -> bool:
    """Whether a site records its statistics releases in its privacy ledger: under DP-SGD
    with noisy statistics, so that one ε per site covers its training and its monitoring."""
    return privacy.enabled and privacy.stats_noise_multiplier is not None


def statistics_privacy(privacy: PrivacyConfig) -> str:
    """What the reports say of the monitoring statistics, in words.

    >>> statistics_privacy(PrivacyConfig())
    'exact: not private (privacy.stats_noise_multiplier=null)'
    >>> statistics_privacy(PrivacyConfig(enabled=True, noise_multiplier=1.0,
    ...     stats_noise_multiplier=5.0, stats_feature_bound=1.0))
    "noised (σ=5 on each record's sensitivity): in each site's ε"
    """
    sigma = privacy.stats_noise_multiplier
    if sigma is None:
        return "exact: not private (privacy.stats_noise_multiplier=null)"
    where = "in each site's ε" if privacy.enabled else "their own ε (stats_epsilon)"
    return f"noised (σ={sigma:g} on each record's sensitivity): {where}"


def check_stats(
    stats: WindowStats, num_features: int, bins: int, num_classes: int, privacy: PrivacyConfig
) -> str | None:
    """:func:`~fedretrain.monitor.stats.stats_problem`, or its noisy counterpart when the sites
    add noise (exact checks would refuse every noisy report)."""
    return StatsMechanism.from_config(privacy).problem(stats, num_features, bins, num_classes)

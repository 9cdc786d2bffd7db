"""Concept drift as a rise in the serving model's error rate: an exact test every period.

Each period, the errors of the pooled tested sites and of each tested site are compared with
their references by Fisher's exact test (one-sided: the error rate rose), exact whatever the
true rate and however few the samples. Two ways to alarm share a stream's false-alarm budget:

* at once, when ``p`` falls below a strict level, so a large jump is caught with no delay;
* when ``p`` falls below a looser level ``a'`` in ``confirm`` consecutive tests of the stream,
  which catches smaller shifts. Consecutive tests share the fixed reference, so their
  statistics are positively correlated (about ``n / (n + n_ref)``); ``a'`` is solved for that
  correlation (:func:`fedretrain.monitor.calibration.confirm_level`), not as
  ``budget ** (1 / confirm)``, which would overspend the budget several times over.

>>> from fedretrain.monitor.stats import PeriodStats, WindowStats
>>> def window(errors, n=200):  # two classes; the confusion matrix is all the test reads
...     confusion = np.array([[n // 2, 0], [errors, n // 2 - errors]])
...     return WindowStats(n, np.zeros(1), np.zeros(1), np.array([[n]]), confusion.sum(1),
...                        confusion.sum(0), confusion, 0.0, 0.0)
>>> detector = BinomialErrorTest(arl=5000, reference_periods=3)
>>> for t, errors in enumerate([20, 21, 19, 22, 18, 60]):  # site 2 jumps from 10% to 30%
...     detector.update(PeriodStats(t, {0: window(20), 1: window(19), 2: window(errors)}))
>>> detector.drift_detected, detector.last.sites
(True, (2,))
>>> print(detector.last.reason)
binomial error test: site 2 error 0.300 vs reference 0.100, p=9e-11 < 1.7e-05; sites alarmed: 2
>>> print(f"{float(fisher_greater(31, 100, 30, 300)):.3g}")  # 31% errors vs 10% in the reference
1.78e-06

Noisy counts. When sites add Gaussian noise to their statistics (:mod:`fedretrain.monitor.private`,
``stats_noise_std`` > 0), Fisher's conditioning on the margins no longer holds. The error rates
are then compared by a normal score (:func:`noisy_error_score`) whose variance adds the noise's
to the binomial's, with the binomial's skewness corrected (Cornish-Fisher); the confirmed path's
correlation becomes the reference's share of that variance.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from scipy import stats as scipy_stats

from fedretrain.monitor.base import Detection, Detector, Seed, check_state, state_header
from fedretrain.monitor.calibration import confirm_level, period_alpha, split_alpha
from fedretrain.monitor.private import count_noise_variance
from fedretrain.monitor.reference import POOLED, SiteReferences
from fedretrain.monitor.stats import PeriodStats

# A noisy stream is tested only while its labelled count exceeds this many noise sd: the error
# rate is a ratio, and its normal approximation needs a denominator well above its noise.
MIN_SIGNAL = 5.0


def fisher_greater(
    errors: ArrayLike, labelled: ArrayLike, ref_errors: ArrayLike, ref_labelled: ArrayLike
) -> np.ndarray:
    """One-sided Fisher exact p-value that the current error rate exceeds the reference's.

    The table ``[[errors, correct], [ref_errors, ref_correct]]`` with margins fixed: the
    current errors are hypergeometric, and ``p = P(X >= errors)``. Equals
    ``scipy.stats.fisher_exact(table, alternative="greater")``. A side with no labelled
    sample gives ``p = 1``.
    """
    e, n, e_ref, n_ref = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.int64) for a in (errors, labelled, ref_errors, ref_labelled))
    )
    testable = (n > 0) & (n_ref > 0)
    total, bad = np.where(testable, n + n_ref, 1), np.where(testable, e + e_ref, 0)
    draws = np.where(testable, n, 0)
    p = scipy_stats.hypergeom.sf(np.where(testable, e, 0) - 1, total, bad, draws)
    return np.asarray(np.where(testable, np.clip(p, 0.0, 1.0), 1.0))


def critical_errors(level: float, labelled: int, ref_errors: int, ref_labelled: int) -> float:
    """The fewest current errors whose :func:`fisher_greater` p-value is below ``level`` (inf if
    none): the threshold a person can compare the period's errors with.

    >>> critical_errors(1e-3, 100, 30, 300)
    24.0
    """

    def p(errors: np.ndarray) -> np.ndarray:
        return fisher_greater(errors, labelled, ref_errors, ref_labelled)

    if labelled < 1 or p(np.array(labelled)) >= level:
        return math.inf
    # p falls as errors rise: narrow (lo, hi], p(lo) >= level (lo = -1 by convention) and
    # p(hi) < level, with up to 32 candidates per vectorised call.
    lo, hi = -1, labelled
    while hi - lo > 1:
        candidates = np.unique(np.linspace(lo + 1, hi - 1, min(32, hi - lo - 1)).round())
        candidates = candidates.astype(np.int64)
        below = candidates[p(candidates) < level]
        hi = int(below.min()) if below.size else hi
        above = candidates[candidates < hi]
        lo = int(above.max()) if above.size else lo
    return float(hi)


class NoisyScore(NamedTuple):
    """:func:`noisy_error_score`'s result, per stream."""

    z: np.ndarray  # the skew-corrected normal score: about N(0, 1) under no change
    wald: np.ndarray  # the rise over the reference in standard deviations, uncorrected
    skew: np.ndarray  # the skewness the correction removed
    current_var: np.ndarray  # variance of the current error rate (sampling and noise)
    reference_var: np.ndarray  # the same for the reference


def noisy_error_score(
    errors: ArrayLike,
    labelled: ArrayLike,
    ref_errors: ArrayLike,
    ref_labelled: ArrayLike,
    noise_var: ArrayLike,
    ref_noise_var: ArrayLike,
) -> NoisyScore:
    """A normal score of the rise of the error rate, for counts carrying Gaussian noise.

    ``noise_var`` and ``ref_noise_var`` are ``(..., 2)``: the noise variances of the errors and
    of the correct predictions (disjoint cells of the confusion matrix, so independent). With
    ``q`` the pooled error rate, the rate ``e / n`` has, to first order, the variance
    ``q (1 - q) / n + ((1 - q)^2 v_errors + q^2 v_correct) / n^2``, and the difference of the
    two rates its third cumulant ``q (1 - q) (1 - 2 q) (1 / n^2 - 1 / n_ref^2)`` (the Gaussian
    noise adds none). The standardised difference ``t`` is skew-corrected by inverting the
    Cornish-Fisher expansion ``t = z + g (z^2 - 1) / 6``. A side with no labelled sample
    scores 0.

    >>> score = noisy_error_score([30.0], [100.0], [100.0], [1000.0], [[0.0, 0.0]], [[0.0, 0.0]])
    >>> round(float(score.z[0]), 2), round(float(score.wald[0]), 2)
    (5.07, 5.91)
    """
    e, n = np.asarray(errors, dtype=float), np.asarray(labelled, dtype=float)
    e_ref, n_ref = np.asarray(ref_errors, dtype=float), np.asarray(ref_labelled, dtype=float)
    v, v_ref = np.asarray(noise_var, dtype=float), np.asarray(ref_noise_var, dtype=float)
    ok = (n > 0) & (n_ref > 0)
    n, n_ref = np.where(ok, n, 1.0), np.where(ok, n_ref, 1.0)
    total = n + n_ref
    q = np.clip((e + e_ref) / total, 0.5 / total, 1 - 0.5 / total)
    var = q * (1 - q) / n + ((1 - q) ** 2 * v[..., 0] + q**2 * v[..., 1]) / n**2
    var_ref = q * (1 - q) / n_ref + ((1 - q) ** 2 * v_ref[..., 0] + q**2 * v_ref[..., 1]) / n_ref**2
    sd = np.sqrt(var + var_ref)
    wald = (e / n - e_ref / n_ref) / sd
    skew = q * (1 - q) * (1 - 2 * q) * (1 / n**2 - 1 / n_ref**2) / sd**3
    z = cornish_fisher_z(wald, skew)
    zero = np.zeros_like(z)
    return NoisyScore(
        np.where(ok, z, zero), np.where(ok, wald, zero), np.where(ok, skew, zero), var, var_ref
    )


def cornish_fisher_z(t: ArrayLike, skew: ArrayLike) -> np.ndarray:
    """The normal quantile ``z`` with ``t = z + skew (z^2 - 1) / 6``, monotone in ``t``.

    The quadratic's root nearest ``t``, written ``2 (a + t) / (1 + sqrt(1 + 4 a (a + t)))``
    (``a = skew / 6``) so that it is exact at ``skew = 0``; past the parabola's vertex the
    root's real part continues it linearly.

    >>> float(cornish_fisher_z(3.0, 0.0)), round(float(cornish_fisher_z(3.0, 0.3)), 3)
    (3.0, 2.689)
    """
    t_arr, a = np.asarray(t, dtype=float), np.asarray(skew, dtype=float) / 6
    root = np.sqrt(np.maximum(1 + 4 * a * (a + t_arr), 0.0))
    return np.asarray(2 * (a + t_arr) / (1 + root))


def check_noise_std(noise_std: float) -> None:
    """Raise unless ``noise_std`` is a finite number >= 0 (the detectors' ``stats_noise_std``)."""
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"stats_noise_std={noise_std}: must be a finite number >= 0")


def error_counts(stats: PeriodStats, noise_std: float = 0.0) -> dict[int, np.ndarray]:
    """Each site's ``[errors, labelled]``, for the sites with labelled samples.

    Exact counts are ints. Noisy ones (``noise_std`` > 0) are floats read off the confusion
    matrix (its ``errors`` property would truncate them), and a site counts as labelled when
    its labelled count exceeds :data:`MIN_SIGNAL` noise standard deviations.
    """
    if noise_std == 0:
        return {
            site: np.array([w.errors, w.labelled])
            for site, w in stats.sites.items()
            if w.labelled > 0
        }
    out = {}
    for site, w in stats.sites.items():
        confusion = np.asarray(w.confusion, dtype=float)
        labelled = float(confusion.sum())
        var = count_noise_variance("labelled", noise_std, num_classes=len(confusion))
        if labelled > MIN_SIGNAL * math.sqrt(var):
            out[site] = np.array([labelled - float(np.trace(confusion)), labelled])
    return out


def seed_errors(refs: SiteReferences, seed: Seed) -> None:
    """Start each validated site's reference at the new model's holdout ``[errors, labelled]``
    (exact counts: no noise). The retrain chose that model on those holdouts, so the seed's
    error is a little optimistic; the reference then grows with the next periods."""
    for site, (correct, examples) in seed.scores.items():
        if examples > 0:
            refs.seed(site, np.array([examples - correct, examples]), noisy_reports=0)


def stream_noise_var(noise_std: float, num_classes: int, reports: ArrayLike) -> np.ndarray:
    """``(streams, 2)`` noise variances of errors and correct counts summing ``reports``
    privatized reports each."""
    per_report = np.array(
        [
            count_noise_variance("errors", noise_std, num_classes=num_classes),
            count_noise_variance("correct", noise_std, num_classes=num_classes),
        ]
    )
    return np.asarray(reports, dtype=float)[:, None] * per_report


def noisy_stream_test(
    stats: PeriodStats,
    refs: SiteReferences,
    tested: list[int],
    cur: np.ndarray,
    ref: np.ndarray,
    noise_std: float,
) -> NoisyScore:
    """:func:`noisy_error_score` of the pooled stream and each tested site's, with the noise
    variance of the reports each side sums (references sum several)."""
    num_classes = len(next(iter(stats.sites.values())).confusion)
    ref_reports = np.array([refs.reports(s) for s in tested], dtype=float)
    cur_reports = np.array([len(tested)] + [1] * len(tested), dtype=float)
    ref_reports = np.concatenate([[ref_reports.sum()], ref_reports])
    return noisy_error_score(
        cur[:, 0],
        cur[:, 1],
        ref[:, 0],
        ref[:, 1],
        stream_noise_var(noise_std, num_classes, cur_reports),
        stream_noise_var(noise_std, num_classes, ref_reports),
    )


class BinomialErrorTest(Detector):
    """Fisher's exact test of each period's error rate against a fixed reference, per stream.

    Streams are the pooled tested sites and each tested site (see
    :mod:`fedretrain.monitor.reference`: a site is tested once it reported labelled samples in
    ``reference_periods`` periods since the reset). The budget ``1 / arl`` is split by weighted
    Bonferroni over the streams (``global_share`` to the pooled one), then within each stream
    ``immediate_share`` to the immediate path and the rest to the confirmed path.

    Parameters
    ----------
    arl : float
        Target mean run length, in stationary periods, between false alarms.
    reference_periods : int
        Labelled reports of a site that form its reference.
    confirm : int
        Consecutive tests below the looser level that raise an alarm; 1 turns the confirmed path
        off (the immediate path then gets the whole budget).
    global_share : float
        Share of the budget spent on the pooled stream.
    immediate_share : float
        Share of each stream's budget spent on the immediate path.
    stats_noise_std : float
        σ of the Gaussian noise the sites add to their statistics (0: exact statistics); see
        :mod:`fedretrain.monitor.private`. Set by the monitor, not in the config.
    """

    TEST = "binomial error"

    def __init__(
        self,
        arl: float,
        reference_periods: int = 3,
        confirm: int = 2,
        global_share: float = 0.5,
        immediate_share: float = 0.5,
        stats_noise_std: float = 0.0,
    ) -> None:
        period_alpha(arl)
        split_alpha(1.0, 1, global_share)
        if confirm < 1:
            raise ValueError(f"confirm={confirm}: must be >= 1")
        if not 0 < immediate_share < 1:
            raise ValueError(f"immediate_share={immediate_share}: must lie in (0, 1)")
        check_noise_std(stats_noise_std)
        self.arl = arl
        self.reference_periods = reference_periods
        self.confirm = confirm
        self.global_share = global_share
        self.immediate_share = immediate_share
        self.stats_noise_std = stats_noise_std
        self._refs = SiteReferences(reference_periods)
        self._streaks: dict[int, int] = {}
        self._loose: dict[tuple[float, float], float] = {}  # derived, not state: a cache
        self._last = Detection.quiet(self.TEST, "no period yet")

    def update(self, stats: PeriodStats) -> None:
        current = error_counts(stats, self.stats_noise_std)
        tested = self._refs.split(current)
        if not tested:
            reason = f"building the reference ({self.reference_periods} labelled reports per site)"
            self._last = Detection.quiet(self.TEST, reason)
            return
        cur = np.stack(
            [np.sum([current[s] for s in tested], axis=0)] + [current[s] for s in tested]
        )
        ref = np.stack([self._refs.pooled(tested)] + [self._refs.reference(s) for s in tested])
        noisy = None
        if self.stats_noise_std > 0:
            noisy = noisy_stream_test(stats, self._refs, tested, cur, ref, self.stats_noise_std)
            p = special.ndtr(-noisy.z)
            # Consecutive scores share the reference: its share of the variance.
            rho = noisy.reference_var / (noisy.current_var + noisy.reference_var)
        else:
            p = fisher_greater(cur[:, 0], cur[:, 1], ref[:, 0], ref[:, 1])
            rho = cur[:, 1] / (cur[:, 1] + ref[:, 1])
        pooled, per_site = split_alpha(period_alpha(self.arl), len(tested), self.global_share)
        budget = np.array([pooled] + [per_site] * len(tested))
        if self.confirm == 1:
            strict, loose = budget, np.zeros_like(budget)
        else:
            strict = budget * self.immediate_share
            loose = self._confirm_levels(budget * (1 - self.immediate_share), rho)
        keys = [POOLED, *tested]
        for key, below in zip(keys, p < loose, strict=True):
            self._streaks[key] = self._streaks.get(key, 0) + 1 if below else 0
        streaks = np.array([self._streaks[k] for k in keys])
        immediate = p < strict
        confirmed = (streaks >= self.confirm) & (self.confirm > 1)
        alarms = immediate | confirmed
        self._last = self._detection(
            keys, cur, ref, p, strict, loose, streaks, immediate, alarms, noisy
        )

    def _confirm_levels(self, budget: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """:func:`confirm_level` per stream, with the correlation rounded up to 0.01 (more
        correlation, a stricter level) so that a steady stream reuses a few solved levels."""
        keys = [(float(b), math.ceil(r * 100) / 100) for b, r in zip(budget, rho, strict=True)]
        missing = sorted(set(keys) - self._loose.keys())
        if missing:
            solved = confirm_level(np.array(missing)[:, 0], self.confirm, np.array(missing)[:, 1])
            self._loose.update(zip(missing, map(float, solved), strict=True))
        return np.array([self._loose[k] for k in keys])

    def _detection(
        self,
        keys: list[int],
        cur: np.ndarray,
        ref: np.ndarray,
        p: np.ndarray,
        strict: np.ndarray,
        loose: np.ndarray,
        streaks: np.ndarray,
        immediate: np.ndarray,
        alarms: np.ndarray,
        noisy: NoisyScore | None,
    ) -> Detection:
        """The evidence of the most alarming stream (or, without alarm, the closest to one)."""
        levels = np.where(alarms & ~immediate, loose, strict)
        with np.errstate(divide="ignore"):
            closeness = np.log(p) - np.log(levels) - 1e3 * alarms
        i = int(np.argmin(closeness))
        site = keys[i]
        where = "pooled" if site == POOLED else f"site {site}"
        error, ref_error = cur[i, 0] / cur[i, 1], ref[i, 0] / ref[i, 1]
        level = float(levels[i])
        if noisy is None:
            threshold = critical_errors(level, int(cur[i, 1]), int(ref[i, 0]), int(ref[i, 1]))
            threshold /= float(cur[i, 1])
        else:  # the error rate whose score reaches the level's normal quantile
            z = float(special.ndtri(1 - level))
            t = z + float(noisy.skew[i]) * (z * z - 1) / 6
            threshold = ref_error + t * math.sqrt(noisy.current_var[i] + noisy.reference_var[i])
        detail = {
            "error": float(error),
            "reference_error": float(ref_error),
            "labelled": float(cur[i, 1]),
            "level": float(strict[i]),
            "confirm_level": float(loose[i]),
            "streak": float(streaks[i]),
            "streams_alarmed": float(alarms.sum()),
            "sites_tested": float(len(keys) - 1),
        }
        if site != POOLED:
            detail["site"] = float(site)
        sites = tuple(k for k, a in zip(keys[1:], alarms[1:], strict=True) if a)
        drifted = bool(alarms.any())
        rates = f"{where} error {error:.3f} vs reference {ref_error:.3f}"
        if drifted:
            how = "" if immediate[i] else f" in {self.confirm} consecutive periods"
            reason = f"{self.TEST} test: {rates}, p={p[i]:.2g} < {level:.2g}{how}"
            if sites:
                reason += f"; sites alarmed: {', '.join(map(str, sites))}"
        else:
            reason = f"no drift: closest {rates}, p={p[i]:.2g} >= {level:.2g}"
        return Detection(
            drifted, sites, self.TEST, float(error), threshold, float(p[i]), detail, reason
        )

    @property
    def last(self) -> Detection:
        return self._last

    def reset(self) -> None:
        self._refs.reset()
        self._streaks.clear()
        self._last = Detection.quiet(self.TEST, "reset: building a new reference")

    def seed(self, seed: Seed) -> None:
        seed_errors(self._refs, seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            **state_header(self),
            "references": self._refs.state_dict(),
            "streaks": [[k, v] for k, v in sorted(self._streaks.items())],
            "last": self._last.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self)
        self._refs.load_state_dict(state["references"])
        self._streaks = {int(k): int(v) for k, v in state["streaks"]}
        self._last = Detection.from_dict(state["last"])

"""Distribution drift on binned counts: feature histograms, labels and predictions.

Each period, every tested site's counts and their pooled sum are compared with the same sites'
references by a two-sample chi-square (or G) homogeneity test per feature. Testing each site
against its own reference is what catches drift confined to a few sites, which pooling dilutes;
the pooled test catches drift everywhere soonest. The false-alarm budget ``1 / arl`` is split by
weighted Bonferroni: ``global_share`` of it to the pooled tests, the rest equally to the sites,
and each stream's share equally over its features.

>>> import numpy as np
>>> from fedretrain.monitor.stats import PeriodStats, WindowStats
>>> rng = np.random.default_rng(0)
>>> def period(t, shift=0.0):
...     sites = {}
...     for s in range(4):
...         hist = rng.multinomial(200, [0.2 + shift, 0.3, 0.3, 0.2 - shift], size=2)
...         sites[s] = WindowStats(200, np.zeros(2), np.zeros(2), hist, np.zeros(2, int),
...                                np.array([200, 0]), np.zeros((2, 2), int), 0.0, 0.0)
...     return PeriodStats(t, sites)
>>> detector = HistogramDrift(arl=1000, reference_periods=3)
>>> [(detector.update(period(t)), detector.drift_detected)[1] for t in range(6)]
[False, False, False, False, False, False]
>>> detector.update(period(6, shift=0.15))
>>> detector.drift_detected, detector.last.sites
(True, (0, 1, 2, 3))
>>> print(detector.last.reason)  # doctest: +NORMALIZE_WHITESPACE
chi2 histogram test: pooled feature 1 chi2=122.9 (dof 3) p=1.8e-26 < 0.00025;
PSI 0.233, JS 0.0408; sites alarmed: 0, 1, 2, 3

Noisy counts. When sites add Gaussian noise to their statistics (``stats_noise_std`` > 0, see
:mod:`fedretrain.monitor.private`), Pearson's statistic would read the noise as drift; the test is
then the Wald statistic of :func:`~fedretrain.monitor.homogeneity.wald_homogeneity`, whose
chi-square null includes the noise variance of every count: that of one report for a site's
period, of ``k`` for the pooled sum of ``k`` sites, and of all the reports a reference sums.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from fedretrain.monitor.base import Detection, Detector, Seed, check_state, state_header
from fedretrain.monitor.binomial_error import MIN_SIGNAL, check_noise_std
from fedretrain.monitor.calibration import period_alpha, split_alpha
from fedretrain.monitor.homogeneity import (
    HomogeneityTest,
    chi2_homogeneity,
    js_divergence,
    psi,
    wald_homogeneity,
)
from fedretrain.monitor.private import count_noise_variance
from fedretrain.monitor.reference import SiteReferences
from fedretrain.monitor.stats import PeriodStats, WindowStats


class HistogramDrift(Detector):
    """Covariate drift: per feature, a homogeneity test of the period's histogram vs the reference.

    A site is tested once it has reported ``reference_periods`` times since the last reset (see
    :mod:`fedretrain.monitor.reference`); until then its reports build its reference. The
    reference is then fixed until :meth:`reset`. Sparse bins are merged so that expected counts
    reach ``min_expected``; features whose counts fall in a single group (constant features)
    are not tested.

    Parameters
    ----------
    arl : float
        Target mean run length, in stationary periods, between false alarms.
    reference_periods : int
        Reports of a site that form its reference.
    test : {"chi2", "g"}
        Pearson's chi-square (default: its tail stays honest at tiny levels) or the G-test
        (likelihood ratio; measurably anti-conservative at small samples, up to twice the nominal
        false-alarm rate with 30 samples a period).
    global_share : float
        Share of the false-alarm budget spent on the pooled tests.
    min_expected : float
        Least expected count per merged bin.
    stats_noise_std : float
        σ of the Gaussian noise the sites add to their statistics (0: exact statistics); see
        :mod:`fedretrain.monitor.private`. Set by the monitor, not in the config. With noise
        the test is the noise-aware Wald statistic, whatever ``test`` says.
    """

    KIND = "histogram"
    MODEL_FREE = True  # counts that do not depend on the serving model: a retrain seeds them

    def __init__(
        self,
        arl: float,
        reference_periods: int = 3,
        test: str = "chi2",
        global_share: float = 0.5,
        min_expected: float = 5.0,
        stats_noise_std: float = 0.0,
    ) -> None:
        period_alpha(arl)
        split_alpha(1.0, 1, global_share)
        try:
            self._kind = HomogeneityTest(test)
        except ValueError:
            valid = [t.value for t in HomogeneityTest]
            raise ValueError(f"test={test!r}: valid tests are {valid}") from None
        if not min_expected > 0:
            raise ValueError(f"min_expected={min_expected}: must be > 0")
        check_noise_std(stats_noise_std)
        self.arl = arl
        self.reference_periods = reference_periods
        self.test = test
        self.global_share = global_share
        self.min_expected = min_expected
        self.stats_noise_std = stats_noise_std
        self._refs = SiteReferences(reference_periods)
        self._last = Detection.quiet(self._name, "no period yet")

    @property
    def _name(self) -> str:
        test = "wald" if self.stats_noise_std > 0 else self._kind.value
        return f"{test} {self.KIND}"

    def _counts(self, window: WindowStats) -> np.ndarray | None:
        """The ``(features, bins)`` counts this detector tests, or None when the site has none."""
        return np.asarray(window.hist) if window.n > 0 else None

    def _noise_variance(self, counts: np.ndarray) -> float:
        """Noise variance of one of :meth:`_counts`'s counts in one report."""
        return count_noise_variance("hist", self.stats_noise_std, num_features=counts.shape[0])

    def _has_signal(self, counts: np.ndarray) -> bool:
        """Whether a report holds data rather than noise: every row's total exceeds
        :data:`~fedretrain.monitor.binomial_error.MIN_SIGNAL` noise sd (always, without noise)."""
        if self.stats_noise_std == 0:
            return True
        sd = math.sqrt(self._noise_variance(counts) * counts.shape[-1])
        return bool(counts.sum(axis=-1).min() > MIN_SIGNAL * sd)

    def update(self, stats: PeriodStats) -> None:
        current = {}
        for key, window in stats.sites.items():
            counts = self._counts(window)
            if counts is not None and self._has_signal(counts):
                current[key] = counts
        tested = self._refs.split(current)
        if not tested:
            reason = f"building the reference ({self.reference_periods} reports per site)"
            self._last = Detection.quiet(self._name, reason)
            return
        cur = np.stack(
            [np.sum([current[s] for s in tested], axis=0)] + [current[s] for s in tested]
        )
        ref = np.stack([self._refs.pooled(tested)] + [self._refs.reference(s) for s in tested])
        if self.stats_noise_std > 0:
            var = self._noise_variance(cur[0])
            ref_reports = np.array([self._refs.reports(s) for s in tested], dtype=float)
            cur_var = var * np.array([len(tested)] + [1.0] * len(tested))
            ref_var = var * np.concatenate([[ref_reports.sum()], ref_reports])
            statistic, dof, p = wald_homogeneity(
                cur, ref, cur_var[:, None], ref_var[:, None], self.min_expected
            )
            cur, ref = np.maximum(cur, 0.0), np.maximum(ref, 0.0)  # effect sizes need counts
        else:
            statistic, dof, p = chi2_homogeneity(cur, ref, self.min_expected, self._kind)
        pooled_level, site_level = split_alpha(
            period_alpha(self.arl), len(tested), self.global_share
        )
        features = cur.shape[1]
        levels = np.array([pooled_level] + [site_level] * len(tested)) / features
        self._last = self._detection(tested, cur, ref, statistic, dof, p, levels)

    def _detection(
        self,
        tested: list[int],
        cur: np.ndarray,
        ref: np.ndarray,
        statistic: np.ndarray,
        dof: np.ndarray,
        p: np.ndarray,
        levels: np.ndarray,
    ) -> Detection:
        """The evidence of the most alarming test (or, without alarm, the closest to one)."""
        alarms = p < levels[:, None]
        sites = tuple(s for s, row in zip(tested, alarms[1:], strict=True) if row.any())
        with np.errstate(divide="ignore"):
            closeness = np.log(p) - np.log(levels)[:, None]
        stream, feature = np.unravel_index(int(np.argmin(closeness)), closeness.shape)
        site = None if stream == 0 else tested[stream - 1]
        level, d = float(levels[stream]), int(dof[stream, feature])
        where = "pooled" if site is None else f"site {site}"
        if cur.shape[1] > 1:
            where += f" feature {feature}"
        detail = {
            "level": level,
            "feature": float(feature),
            "dof": float(d),
            "psi": float(psi(cur[stream, feature], ref[stream, feature])),
            "js": float(js_divergence(cur[stream, feature], ref[stream, feature])),
            "streams_alarmed": float(alarms.any(axis=1).sum()),
            "sites_tested": float(len(tested)),
        }
        if site is not None:
            detail["site"] = float(site)
        drifted = bool(alarms.any())
        stat, p_min = float(statistic[stream, feature]), float(p[stream, feature])
        effect = f"PSI {detail['psi']:.3f}, JS {detail['js']:.4f}"
        if drifted:
            test = "wald" if self.stats_noise_std > 0 else self._kind.value
            reason = (
                f"{self._name} test: {where} {test}={stat:.1f} (dof {d}) "
                f"p={p_min:.2g} < {level:.2g}; {effect}"
            )
            if sites:
                reason += f"; sites alarmed: {', '.join(map(str, sites))}"
        else:
            reason = f"no drift: closest {where} p={p_min:.2g} >= {level:.2g}; {effect}"
        threshold = float(scipy_stats.chi2.isf(level, d)) if d > 0 else math.inf
        return Detection(drifted, sites, self._name, stat, threshold, p_min, detail, reason)

    @property
    def last(self) -> Detection:
        return self._last

    def reset(self) -> None:
        self._refs.reset()
        self._last = Detection.quiet(self._name, "reset: building a new reference")

    def seed(self, seed: Seed) -> None:
        """Each site's reference starts from the retrain period's counts, which do not depend
        on the model (one privatized report each)."""
        if seed.stats is None or not self.MODEL_FREE:
            return
        for site, window in seed.stats.sites.items():
            counts = self._counts(window)
            if counts is not None and self._has_signal(counts):
                self._refs.seed(site, counts, noisy_reports=1)

    def state_dict(self) -> dict[str, Any]:
        return {
            **state_header(self),
            "references": self._refs.state_dict(),
            "last": self._last.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self)
        self._refs.load_state_dict(state["references"])
        self._last = Detection.from_dict(state["last"])


class LabelShift(HistogramDrift):
    """Prior shift: the class frequencies of labelled samples vs the reference (one "feature")."""

    KIND = "label shift"

    def _counts(self, window: WindowStats) -> np.ndarray | None:
        labels = np.asarray(window.label_counts)
        return labels[None, :] if labels.sum() > 0 else None

    def _noise_variance(self, counts: np.ndarray) -> float:
        # A private site's label counts are its noisy confusion matrix's row sums.
        classes = counts.shape[1]
        return count_noise_variance("label_counts", self.stats_noise_std, num_classes=classes)


class PredictionShift(HistogramDrift):
    """Label-free: the frequencies of the serving model's predicted classes vs the reference.

    Moves under covariate shift, prior shift, and any drift that changes what the model outputs;
    needs no label, so it watches sites whose labels arrive late or never.
    """

    KIND = "prediction shift"
    MODEL_FREE = False  # a retrain period's predictions are the previous model's: no seed

    def _counts(self, window: WindowStats) -> np.ndarray | None:
        preds = np.asarray(window.pred_counts)
        return preds[None, :] if preds.sum() > 0 else None

    def _noise_variance(self, counts: np.ndarray) -> float:
        return count_noise_variance("pred_counts", self.stats_noise_std)

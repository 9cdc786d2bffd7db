"""Sequential tests on the error rate: one scalar detector per stream, fed error scores.

Each period, the pooled tested sites and each tested site give one *error score* ``z_t`` and a
scalar sequential detector per stream (CUSUM, Page-Hinkley) accumulates them. Two choices make
Siegmund's run-length approximation hold for these scores, measured on binomial streams:

Self-starting reference. Against a *fixed* reference of a few periods every ``z_t`` shares the
reference's sampling error (consecutive scores have correlation about ``n_t / (n_t + n_ref)``,
1/4 with three reference periods), so an unlucky reference offsets every later score alike and
the CUSUM drifts up: with ``k = 0.5`` and a target run length of 10,000 periods per stream, the
measured false-alarm rate was 91 times the target (10 points error, 100 samples per period).
Here each stream's reference is its first ``reference_periods`` reports *plus every later
period once tested*, so ``z_t`` compares period ``t`` with all periods before it: the scores are
independent under no drift (the classical self-starting CUSUM). The price: a persistent shift is
slowly absorbed into the reference, which the exact, fixed-reference
:class:`~fedretrain.monitor.binomial_error.BinomialErrorTest` is there to catch.

Exact scores. The Wald statistic ``(p_t - p_ref) / se`` (:func:`standardized_error`, still
reported in each decision's ``detail``) is right-skewed for rare errors, and a CUSUM reads
exactly that tail: self-started Wald scores still gave 1.3 to 1.7 times the target rate.
:func:`error_score` instead maps the exact conditional tail probability to a normal quantile:
given the errors of this period and its reference together, this period's errors are
hypergeometric whatever the true rate, and for a self-starting reference those conditional
probability transforms are independent uniforms under no drift (up to the discreteness, which
the mid-p halves). The measured run lengths came within 10% of Siegmund's, on the safe side for
rare errors.

Noisy counts. With Gaussian noise on the sites' statistics (``stats_noise_std`` > 0, see
:mod:`fedretrain.monitor.private`) the hypergeometric conditioning fails; the score is then
:func:`~fedretrain.monitor.binomial_error.noisy_error_score`, a normal score whose variance adds the
noise of the period's counts and of the (growing) reference's, skew-corrected, so the CUSUM and
Page-Hinkley thresholds keep their meaning.

>>> z = standardized_error(np.array([30, 10]), np.array([100, 100]), 100, 1000)
>>> z.round(2).tolist()
[6.35, 0.0]
>>> error_score(np.array([30, 10]), np.array([100, 100]), 100, 1000).round(2).tolist()
[5.17, 0.04]
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from scipy import stats as scipy_stats

from fedretrain.monitor.base import Detection, Detector, Seed, check_state, state_header
from fedretrain.monitor.binomial_error import (
    check_noise_std,
    error_counts,
    noisy_stream_test,
    seed_errors,
)
from fedretrain.monitor.calibration import period_alpha, split_alpha, split_arl
from fedretrain.monitor.reference import POOLED, SiteReferences
from fedretrain.monitor.stats import PeriodStats


class ScalarDetector(Protocol):
    """A River-shaped detector of one stream of numbers, with a settable threshold."""

    threshold: float

    def update(self, x: float) -> None: ...

    @property
    def drift_detected(self) -> bool: ...

    @property
    def statistic(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def standardized_error(
    errors: ArrayLike, labelled: ArrayLike, ref_errors: ArrayLike, ref_labelled: ArrayLike
) -> np.ndarray:
    """The error rate's rise over the reference, in standard errors of the difference."""
    e, n = np.asarray(errors, float), np.asarray(labelled, float)
    e_ref, n_ref = np.asarray(ref_errors, float), np.asarray(ref_labelled, float)
    q = (e_ref + 0.5) / (n_ref + 1.0)
    return np.asarray((e / n - e_ref / n_ref) / np.sqrt(q * (1 - q) * (1 / n + 1 / n_ref)))


def error_score(
    errors: ArrayLike, labelled: ArrayLike, ref_errors: ArrayLike, ref_labelled: ArrayLike
) -> np.ndarray:
    """Normal score of the exact one-sided mid-p of the errors given errors and reference.

    ``z = -Phi^{-1}(P(X > e) + P(X = e) / 2)`` with ``X`` hypergeometric (the current errors
    given the margins of Fisher's table): about N(0, 1) under no drift whatever the error rate,
    including a reference without errors, and large when errors rose. A side without labelled
    samples scores 0.
    """
    e, n, e_ref, n_ref = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.int64) for a in (errors, labelled, ref_errors, ref_labelled))
    )
    ok = (n > 0) & (n_ref > 0)
    total, bad, draws = np.where(ok, n + n_ref, 1), np.where(ok, e + e_ref, 0), np.where(ok, n, 0)
    x = np.where(ok, e, 0)
    mid = scipy_stats.hypergeom.sf(x, total, bad, draws) + 0.5 * scipy_stats.hypergeom.pmf(
        x, total, bad, draws
    )
    z = -special.ndtri(np.clip(mid, 1e-300, 1.0))
    return np.asarray(np.where(ok, z, 0.0))


class SequentialErrorDetector(Detector):
    """Self-starting error scores, per stream, into one scalar detector each.

    The streams' run lengths are split like false-alarm rates (``global_share`` of the rate to
    the pooled stream, the rest equally to the tested sites), and each scalar detector's
    threshold is set from its stream's run length every period (the number of tested sites may
    change). A scalar detector restarts after it fires, as River's do. ``stats_noise_std`` is
    σ of the sites' noise (0: exact statistics), set by the monitor.
    """

    TEST = "sequential error"

    def __init__(
        self, arl: float, reference_periods: int, global_share: float, stats_noise_std: float = 0.0
    ) -> None:
        period_alpha(arl)
        split_alpha(1.0, 1, global_share)
        check_noise_std(stats_noise_std)
        self.arl = arl
        self.reference_periods = reference_periods
        self.global_share = global_share
        self.stats_noise_std = stats_noise_std
        self._refs = SiteReferences(reference_periods)
        self._streams: dict[int, ScalarDetector] = {}
        self._thresholds: dict[float, float] = {}  # derived from arguments, not state: a cache
        self._last = Detection.quiet(self.TEST, "no period yet")

    @abstractmethod
    def _new_stream(self) -> ScalarDetector:
        """A fresh scalar detector for one stream."""

    @abstractmethod
    def _threshold(self, arl: float) -> float:
        """The scalar detector's threshold for an in-control run length of ``arl`` periods."""

    def update(self, stats: PeriodStats) -> None:
        current = error_counts(stats, self.stats_noise_std)
        tested = self._refs.split(current, grow=False)  # it grows below, with every period
        if not tested:
            reason = f"building the reference ({self.reference_periods} labelled reports per site)"
            self._last = Detection.quiet(self.TEST, reason)
            return
        cur = np.stack(
            [np.sum([current[s] for s in tested], axis=0)] + [current[s] for s in tested]
        )
        ref = np.stack([self._refs.pooled(tested)] + [self._refs.reference(s) for s in tested])
        if self.stats_noise_std > 0:
            noisy = noisy_stream_test(stats, self._refs, tested, cur, ref, self.stats_noise_std)
            z, wald = noisy.z, noisy.wald
        else:
            z = error_score(cur[:, 0], cur[:, 1], ref[:, 0], ref[:, 1])
            wald = standardized_error(cur[:, 0], cur[:, 1], ref[:, 0], ref[:, 1])
        for site in tested:  # self-starting: this period joins the reference of later ones
            self._refs.add(site, current[site])
        pooled_arl, site_arl = split_arl(self.arl, len(tested), self.global_share)
        for arl in (pooled_arl, site_arl):
            if arl not in self._thresholds:
                self._thresholds[arl] = self._threshold(arl)
        keys = [POOLED, *tested]
        values, thresholds, alarms = [], [], []
        for key, z_t in zip(keys, z, strict=True):
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = self._new_stream()
            stream.threshold = self._thresholds[pooled_arl if key == POOLED else site_arl]
            stream.update(float(z_t))
            values.append(stream.statistic)
            thresholds.append(stream.threshold)
            alarms.append(stream.drift_detected)
        self._last = self._detection(keys, cur, ref, z, wald, values, thresholds, alarms)

    def _detection(
        self,
        keys: list[int],
        cur: np.ndarray,
        ref: np.ndarray,
        z: np.ndarray,
        wald: np.ndarray,
        values: list[float],
        thresholds: list[float],
        alarms: list[bool],
    ) -> Detection:
        """The evidence of the most alarming stream (or, without alarm, the closest to one)."""
        excess = np.array(values) - np.array(thresholds) + 1e6 * np.array(alarms)
        i = int(np.argmax(excess))
        site = keys[i]
        where = "pooled" if site == POOLED else f"site {site}"
        error, ref_error = cur[i, 0] / cur[i, 1], ref[i, 0] / ref[i, 1]
        detail = {
            "score": float(z[i]),
            "z": float(wald[i]),
            "error": float(error),
            "reference_error": float(ref_error),
            "labelled": float(cur[i, 1]),
            "streams_alarmed": float(sum(alarms)),
            "sites_tested": float(len(keys) - 1),
        }
        if site != POOLED:
            detail["site"] = float(site)
        sites = tuple(k for k, a in zip(keys[1:], alarms[1:], strict=True) if a)
        drifted = any(alarms)
        value, h = values[i], thresholds[i]
        numbers = f"(error {error:.3f} vs reference {ref_error:.3f}, score {z[i]:.2f})"
        if drifted:
            reason = f"{self.TEST}: {where} statistic {value:.2f} > {h:.2f} {numbers}"
            if sites:
                reason += f"; sites alarmed: {', '.join(map(str, sites))}"
        else:
            reason = f"no drift: highest {where} statistic {value:.2f} <= {h:.2f} {numbers}"
        return Detection(drifted, sites, self.TEST, float(value), float(h), None, detail, reason)

    @property
    def last(self) -> Detection:
        return self._last

    def reset(self) -> None:
        self._refs.reset()
        self._streams.clear()
        self._last = Detection.quiet(self.TEST, "reset: building a new reference")

    def seed(self, seed: Seed) -> None:
        seed_errors(self._refs, seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            **state_header(self),
            "references": self._refs.state_dict(),
            "streams": [[k, s.state_dict()] for k, s in sorted(self._streams.items())],
            "last": self._last.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self)
        self._refs.load_state_dict(state["references"])
        self._streams = {}
        for key, stream_state in state["streams"]:
            stream = self._new_stream()
            stream.load_state_dict(stream_state)
            self._streams[int(key)] = stream
        self._last = Detection.from_dict(state["last"])

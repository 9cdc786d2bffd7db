"""Sequential tests on the error rate: one scalar detector per stream, fed standardized errors.

Each period, the pooled tested sites and each tested site give one standardized error rate

    z_t = (p_t - p_ref) / sqrt(q (1 - q) (1 / n_t + 1 / n_ref)),  q = (e_ref + 1/2) / (n_ref + 1)

(``q`` is continuity-corrected so that a reference without errors still scales), and a scalar
sequential detector per stream (CUSUM, Page-Hinkley) accumulates them.

Why the reference is self-starting here. Against a *fixed* reference of a few periods every
``z_t`` shares the reference's sampling error: consecutive ``z`` have correlation about
``n_t / (n_t + n_ref)`` (1/4 with three reference periods), so one unlucky reference shifts
every later ``z`` by the same offset, and a CUSUM with ``k = 0.5`` drifts to a false alarm in
tens of periods in about one run out of six. Here each stream's reference is its first
``reference_periods`` reports *plus every later period once it has been tested*: ``z_t`` then
compares period ``t`` with all periods before it, the innovations are uncorrelated under no drift
(the classical self-starting CUSUM), and Siegmund's run-length approximation holds. The price:
a persistent shift is slowly absorbed into the reference, which is what the exact
:class:`~fedretrain.monitor.error_test.BinomialErrorTest` (fixed reference) is there for.

>>> z = standardized_error(np.array([30, 10]), np.array([100, 100]), 100, 1000)
>>> z.round(2).tolist()
[6.35, 0.0]
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from fedretrain.monitor.base import Detection, Detector, check_state, state_header
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


class SequentialErrorDetector(Detector):
    """Self-starting standardized error rates, per stream, into one scalar detector each.

    The streams' run lengths are split like false-alarm rates (``global_share`` of the rate to
    the pooled stream, the rest equally to the tested sites), and each scalar detector's
    threshold is set from its stream's run length every period (the number of tested sites may
    change). A scalar detector restarts after it fires, as River's do.
    """

    TEST = "sequential error"

    def __init__(self, arl: float, reference_periods: int, global_share: float) -> None:
        period_alpha(arl)
        split_alpha(1.0, 1, global_share)
        self.arl = arl
        self.reference_periods = reference_periods
        self.global_share = global_share
        self._refs = SiteReferences(reference_periods)
        self._streams: dict[int, ScalarDetector] = {}
        self._last = Detection.quiet(self.TEST, "no period yet")

    @abstractmethod
    def _new_stream(self) -> ScalarDetector:
        """A fresh scalar detector for one stream."""

    @abstractmethod
    def _threshold(self, arl: float) -> float:
        """The scalar detector's threshold for an in-control run length of ``arl`` periods."""

    def update(self, stats: PeriodStats) -> None:
        current = {
            site: np.array([w.errors, w.labelled])
            for site, w in stats.sites.items()
            if w.labelled > 0
        }
        tested = self._refs.split(current)
        if not tested:
            reason = f"building the reference ({self.reference_periods} labelled reports per site)"
            self._last = Detection.quiet(self.TEST, reason)
            return
        cur = np.stack(
            [np.sum([current[s] for s in tested], axis=0)] + [current[s] for s in tested]
        )
        ref = np.stack([self._refs.pooled(tested)] + [self._refs.reference(s) for s in tested])
        z = standardized_error(cur[:, 0], cur[:, 1], ref[:, 0], ref[:, 1])
        for site in tested:  # self-starting: this period joins the reference of later ones
            self._refs.add(site, current[site])
        pooled_arl, site_arl = split_arl(self.arl, len(tested), self.global_share)
        keys = [POOLED, *tested]
        values, thresholds, alarms = [], [], []
        for key, z_t in zip(keys, z, strict=True):
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = self._new_stream()
            stream.threshold = self._threshold(pooled_arl if key == POOLED else site_arl)
            stream.update(float(z_t))
            values.append(stream.statistic)
            thresholds.append(stream.threshold)
            alarms.append(stream.drift_detected)
        self._last = self._detection(keys, cur, ref, z, values, thresholds, alarms)

    def _detection(
        self,
        keys: list[int],
        cur: np.ndarray,
        ref: np.ndarray,
        z: np.ndarray,
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
            "z": float(z[i]),
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
        numbers = f"(error {error:.3f} vs reference {ref_error:.3f}, z={z[i]:.2f})"
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

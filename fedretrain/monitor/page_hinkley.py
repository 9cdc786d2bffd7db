"""Page-Hinkley: River's scalar detector, and the period detector on error scores.

:class:`PageHinkley` reproduces ``river.drift.PageHinkley`` update for update (same arithmetic,
same quirks: the decrease test starts from a maximum of -1, drift is tested only from
``min_instances`` values on, and the detector restarts on the update after an alarm), so River's
documentation and results carry over.

>>> import random
>>> rng = random.Random(12345)
>>> ph = PageHinkley()
>>> stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
>>> for i, x in enumerate(stream):
...     ph.update(x)
...     if ph.drift_detected:
...         print(f"Change detected at index {i}, input value: {x}")
Change detected at index 1006, input value: 5
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from fedretrain.monitor.calibration import cusum_threshold
from fedretrain.monitor.sequential import ScalarDetector, SequentialErrorDetector


class PageHinkleyMode(str, Enum):
    """Which changes of the mean to detect."""

    UP = "up"
    DOWN = "down"
    BOTH = "both"


class PageHinkley:
    """Page-Hinkley test of a change in the mean of a stream, with River's exact semantics.

    With ``m_t`` the running mean of ``x_1..x_t``, it keeps
    ``U_t = alpha U_{t-1} + (x_t - m_t) - delta`` and ``D_t = alpha D_{t-1} + (x_t - m_t) + delta``
    and alarms when ``U_t - min U > threshold`` (up) or ``max D - D_t > threshold`` (down).

    Parameters
    ----------
    min_instances : int
        Values seen before the first test.
    delta : float
        Magnitude of change tolerated (the CUSUM reference value ``k``).
    threshold : float
        Detection threshold (lambda).
    alpha : float
        Forgetting factor of the sums (1: none).
    mode : {"up", "down", "both"}
        Whether to detect increases, decreases or both.
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        try:
            self._mode = PageHinkleyMode(mode)
        except ValueError:
            valid = [m.value for m in PageHinkleyMode]
            raise ValueError(f"mode={mode!r}: valid modes are {valid}") from None
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self._drift_detected = False
        self._n = 0.0
        self._mean = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -1.0
        self._statistic = 0.0

    def update(self, x: float) -> None:
        if self._drift_detected:
            self._reset()
        self._n += 1.0
        self._mean += (1.0 / self._n) * (x - self._mean)  # river.stats.Mean, operation for op.
        dev = x - self._mean
        self._sum_increase = self.alpha * self._sum_increase + dev - self.delta
        self._sum_decrease = self.alpha * self._sum_decrease + dev + self.delta
        self._min_increase = min(self._min_increase, self._sum_increase)
        self._max_decrease = max(self._max_decrease, self._sum_decrease)
        if self._n >= self.min_instances:
            increase = self._sum_increase - self._min_increase
            decrease = self._max_decrease - self._sum_decrease
            if self._mode is PageHinkleyMode.UP:
                self._statistic = increase
            elif self._mode is PageHinkleyMode.DOWN:
                self._statistic = decrease
            else:
                self._statistic = max(increase, decrease)
            self._drift_detected = self._statistic > self.threshold

    @property
    def drift_detected(self) -> bool:
        return self._drift_detected

    @property
    def statistic(self) -> float:
        """The tested value of the latest update (0 before ``min_instances``)."""
        return self._statistic

    def state_dict(self) -> dict[str, Any]:
        return {
            "drift_detected": self._drift_detected,
            "n": self._n,
            "mean": self._mean,
            "sum_increase": self._sum_increase,
            "sum_decrease": self._sum_decrease,
            "min_increase": None if math.isinf(self._min_increase) else self._min_increase,
            "max_decrease": self._max_decrease,
            "statistic": self._statistic,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._drift_detected = bool(state["drift_detected"])
        self._n = float(state["n"])
        self._mean = float(state["mean"])
        self._sum_increase = float(state["sum_increase"])
        self._sum_decrease = float(state["sum_decrease"])
        low = state["min_increase"]
        self._min_increase = math.inf if low is None else float(low)
        self._max_decrease = float(state["max_decrease"])
        self._statistic = float(state["statistic"])


class ErrorPageHinkley(SequentialErrorDetector):
    """Page-Hinkley (mode "up", ``alpha = 1``) on each stream's error score.

    Calibration rule. With ``alpha = 1`` the up-test is ``U_t - min_s U_s``, a CUSUM with
    reference value ``delta`` on the deviations ``x_t - m_t`` from the running mean. For
    independent N(0, 1) inputs those deviations are uncorrelated with variance ``(t - 1) / t``,
    so the threshold is set as for a CUSUM with ``k = delta`` from Siegmund's approximation
    (:func:`~fedretrain.monitor.calibration.cusum_threshold`); the slightly smaller variance
    makes it a little conservative (verified by simulation in the unit tests). The inputs are the
    self-starting exact error scores of :mod:`fedretrain.monitor.sequential`, independent
    and close to N(0, 1) under no drift. Unlike the CUSUM, PH also subtracts its own running mean,
    so it tracks a rise relative to the stream's level since its last alarm.

    Parameters
    ----------
    arl : float
        Target mean run length, in stationary periods, between false alarms.
    reference_periods : int
        Labelled reports of a site before its stream starts.
    delta : float
        PH's delta, in standard errors (the CUSUM's ``k``).
    min_instances : int
        PH's values before its first test.
    global_share : float
        Share of the false-alarm rate spent on the pooled stream.
    stats_noise_std : float
        σ of the Gaussian noise the sites add to their statistics (0: exact statistics); see
        :mod:`fedretrain.monitor.private`. Set by the monitor, not in the config.
    """

    TEST = "Page-Hinkley on error rate"

    def __init__(
        self,
        arl: float,
        reference_periods: int = 3,
        delta: float = 0.5,
        min_instances: int = 1,
        global_share: float = 0.5,
        stats_noise_std: float = 0.0,
    ) -> None:
        if not delta > 0:
            raise ValueError(f"delta={delta}: must be > 0")
        if min_instances < 1:
            raise ValueError(f"min_instances={min_instances}: must be >= 1")
        self.delta = delta
        self.min_instances = min_instances
        super().__init__(arl, reference_periods, global_share, stats_noise_std)

    def _new_stream(self) -> ScalarDetector:
        return PageHinkley(min_instances=self.min_instances, delta=self.delta, alpha=1.0, mode="up")

    def _threshold(self, arl: float) -> float:
        return cusum_threshold(arl, self.delta)

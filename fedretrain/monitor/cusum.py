"""One-sided CUSUM: the scalar recursion, and the period detector on error scores.

>>> cusum = Cusum(k=0.5, threshold=4.0)
>>> for x in [0.3, -1.0, 2.0, 1.5, 2.5]:
...     cusum.update(x)
...     print(round(cusum.statistic, 2), cusum.drift_detected)
0.0 False
0.0 False
1.5 False
2.5 False
4.5 True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedretrain.monitor.calibration import cusum_threshold
from fedretrain.monitor.sequential import ScalarDetector, SequentialErrorDetector


def cusum_path(z: np.ndarray, k: float) -> np.ndarray:
    """``S_t = max(0, S_{t-1} + z_t - k)`` from ``S_0 = 0`` along the last axis (no restarts).

    >>> cusum_path(np.array([1.0, 1.0, -2.0, 3.0]), k=0.5).tolist()
    [0.5, 1.0, 0.0, 2.5]
    """
    z = np.asarray(z, float)
    out = np.empty_like(z)
    s = np.zeros(z.shape[:-1])
    for t in range(z.shape[-1]):
        s = np.maximum(0.0, s + z[..., t] - k)
        out[..., t] = s
    return out


class Cusum:
    """One-sided upper CUSUM of a stream of numbers, in River's shape.

    ``S_t = max(0, S_{t-1} + x_t - k)``; ``drift_detected`` when ``S_t > threshold``. After an
    alarm the next update starts again from ``S = 0``. On independent N(0, 1) inputs its
    in-control run length is :func:`fedretrain.monitor.calibration.siegmund_arl`.

    Parameters
    ----------
    k : float
        Reference value: half the shift (in input standard deviations) it is tuned to detect.
    threshold : float
        Decision interval ``h``.
    """

    def __init__(self, k: float = 0.5, threshold: float = 5.0) -> None:
        self.k = k
        self.threshold = threshold
        self._s = 0.0
        self._drift_detected = False

    def update(self, x: float) -> None:
        if self._drift_detected:
            self._s, self._drift_detected = 0.0, False
        self._s = max(0.0, self._s + x - self.k)
        self._drift_detected = self._s > self.threshold

    @property
    def drift_detected(self) -> bool:
        return self._drift_detected

    @property
    def statistic(self) -> float:
        return self._s

    def state_dict(self) -> dict[str, Any]:
        return {"s": self._s, "drift_detected": self._drift_detected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._s = float(state["s"])
        self._drift_detected = bool(state["drift_detected"])


class ErrorCusum(SequentialErrorDetector):
    """CUSUM on each stream's self-starting error score (pooled and per site).

    The threshold of a stream with run length ``L`` solves Siegmund's approximation
    ``L = (exp(2kb) - 2kb - 1) / (2k^2)``, ``b = h + 1.166``; the streams' run lengths are
    ``arl`` split like rates (see :class:`~fedretrain.monitor.sequential.SequentialErrorDetector`,
    whose module explains why the reference keeps growing). Sites are tested once they have
    ``reference_periods`` labelled reports.

    Parameters
    ----------
    arl : float
        Target mean run length, in stationary periods, between false alarms.
    reference_periods : int
        Labelled reports of a site before its stream starts.
    k : float
        CUSUM reference value, in standard errors (0.5: tuned to a shift of one standard error
        per period; smaller detects smaller shifts, later).
    global_share : float
        Share of the false-alarm rate spent on the pooled stream.
    stats_noise_std : float
        σ of the Gaussian noise the sites add to their statistics (0: exact statistics); see
        :mod:`fedretrain.monitor.private`. Set by the monitor, not in the config.
    """

    TEST = "CUSUM on error rate"

    def __init__(
        self,
        arl: float,
        reference_periods: int = 3,
        k: float = 0.5,
        global_share: float = 0.5,
        stats_noise_std: float = 0.0,
    ) -> None:
        if not k > 0:
            raise ValueError(f"k={k}: must be > 0")
        self.k = k
        super().__init__(arl, reference_periods, global_share, stats_noise_std)

    def _new_stream(self) -> ScalarDetector:
        return Cusum(k=self.k)

    def _threshold(self, arl: float) -> float:
        return cusum_threshold(arl, self.k)

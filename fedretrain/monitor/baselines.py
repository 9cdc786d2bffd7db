"""Null-object detectors, the baselines every policy is compared against.

>>> from fedretrain.monitor.stats import PeriodStats
>>> periodic = Periodic(every=3)
>>> fired = []
>>> for t in range(7):
...     periodic.update(PeriodStats(period=t))
...     fired.append(periodic.drift_detected)
>>> [t for t, f in enumerate(fired) if f]
[2, 5]
"""

from __future__ import annotations

from typing import Any

from fedretrain.monitor.base import Detection, Detector, check_state, state_header
from fedretrain.monitor.stats import PeriodStats


class NoDrift(Detector):
    """Never fires: the "never retrain" baseline."""

    TEST = "none"

    def __init__(self) -> None:
        self._last = Detection.quiet(self.TEST, "no drift detector: never fires")

    def update(self, stats: PeriodStats) -> None:
        self._last = Detection.quiet(self.TEST, "no drift detector: never fires")

    @property
    def last(self) -> Detection:
        return self._last

    def reset(self) -> None:
        self._last = Detection.quiet(self.TEST, "no drift detector: never fires")

    def state_dict(self) -> dict[str, Any]:
        return state_header(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self)


class Periodic(Detector):
    """Fires every ``every`` periods since the last reset (``every=1``: every period).

    Parameters
    ----------
    every : int
        The period of the schedule; the first alarm comes on the ``every``-th update.
    """

    TEST = "schedule"

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every={every}: must be >= 1")
        self.every = every
        self._seen = 0
        self._last = Detection.quiet(self.TEST, "schedule: no period yet")

    def update(self, stats: PeriodStats) -> None:
        self._seen += 1
        since = self._seen % self.every
        if since == 0:
            reason = f"schedule: {self._seen} periods since reset, fires every {self.every}"
            self._last = Detection(
                True, (), self.TEST, float(self._seen), float(self.every), None, {}, reason
            )
        else:
            reason = f"schedule: {since} of {self.every} periods"
            self._last = Detection(
                False, (), self.TEST, float(since), float(self.every), None, {}, reason
            )

    @property
    def last(self) -> Detection:
        return self._last

    def reset(self) -> None:
        self._seen = 0
        self._last = Detection.quiet(self.TEST, "schedule: no period yet")

    def state_dict(self) -> dict[str, Any]:
        return {**state_header(self), "seen": self._seen, "last": self._last.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self)
        self._seen = int(state["seen"])
        self._last = Detection.from_dict(state["last"])

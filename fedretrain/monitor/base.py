"""The detector contract: one :class:`PeriodStats` in per period, one :class:`Detection` out.

Shaped after River's ``DriftDetector`` (``update`` then ``drift_detected``), with two additions
a federated monitor needs: the evidence behind each decision (which sites, which test, which
numbers), and a versioned, JSON-serialisable state so that a killed run resumes where it was.

>>> from fedretrain.monitor.baselines import NoDrift
>>> detector = NoDrift()
>>> detector.update(PeriodStats(period=0))
>>> detector.drift_detected, detector.last.reason
(False, 'no drift detector: never fires')
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedretrain.monitor.stats import PeriodStats

STATE_VERSION = 1


@dataclass(frozen=True)
class Detection:
    """A detector's decision on one period and the evidence behind it.

    Parameters
    ----------
    drifted : bool
        Whether the detector alarmed on this period.
    sites : tuple of int
        The sites whose own test alarmed, sorted; empty for an alarm of the pooled test alone
        (or no alarm).
    test : str
        The test that decided, e.g. ``"chi2 histogram"``.
    statistic, threshold : float
        The deciding (or, without alarm, the closest-to-alarm) test's statistic and the value it
        was compared with; NaN where there is none yet (while building the reference).
    p_value : float or None
        That test's p-value, where the test has one.
    detail : dict of str to float
        Further numbers a log line can show (effect sizes, levels, the site or feature).
    reason : str
        One line a person can read: what fired, where, and on which numbers.
    """

    drifted: bool
    sites: tuple[int, ...]
    test: str
    statistic: float
    threshold: float
    p_value: float | None
    detail: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @classmethod
    def quiet(cls, test: str, reason: str) -> Detection:
        """No alarm and no test statistic (no data yet, reference still building, baselines)."""
        return cls(False, (), test, math.nan, math.nan, None, {}, reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become None."""
        return {
            "drifted": self.drifted,
            "sites": list(self.sites),
            "test": self.test,
            "statistic": _finite(self.statistic),
            "threshold": _finite(self.threshold),
            "p_value": _finite(self.p_value),
            "detail": {k: _finite(v) for k, v in self.detail.items()},
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detection:
        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        return cls(
            drifted=bool(data["drifted"]),
            sites=tuple(int(s) for s in data["sites"]),
            test=str(data["test"]),
            statistic=number(data["statistic"]),
            threshold=number(data["threshold"]),
            p_value=None if data["p_value"] is None else float(data["p_value"]),
            detail={k: number(v) for k, v in data["detail"].items()},
            reason=str(data["reason"]),
        )


@dataclass(frozen=True)
class Seed:
    """Where a new serving model starts: the period it was trained on, as far as it is known.

    After a retrain the monitor need not wait for new periods to form its reference: the
    retrain's own period already shows the new concept. Detectors seeded with it test the very
    next period (:meth:`Detector.seed`).

    Parameters
    ----------
    stats : PeriodStats or None
        That period's statistics as the sites sent them, under the previous model: their
        feature and label counts do not depend on the model, their predictions do. None where
        they do not fit the monitor (period 0's came before the histogram edges were fixed).
    scores : mapping of int to (int, int)
        Site -> (correct, examples) of the new model on that period's holdouts: its
        validation, the same evaluation the gate read.
    """

    stats: PeriodStats | None
    scores: Mapping[int, tuple[int, int]]


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class Detector(ABC):
    """Feeds on one period's statistics at a time; :attr:`last` explains the latest decision."""

    @abstractmethod
    def update(self, stats: PeriodStats) -> None:
        """Feed one period (its sites' statistics already validated)."""

    @property
    @abstractmethod
    def last(self) -> Detection:
        """The decision on the latest period, with its evidence."""

    @property
    def drift_detected(self) -> bool:
        """Whether the latest period raised an alarm."""
        return self.last.drifted

    @abstractmethod
    def reset(self) -> None:
        """A new serving model: forget the reference and all state."""

    def seed(self, seed: Seed) -> None:  # noqa: B027 (optional: the default builds as before)
        """Start the reference, just reset, from ``seed``, so the next period is tested.

        Detectors that can use none of it (their statistic depends on the previous model's
        predictions) keep this default and build their reference from the next periods.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Versioned, JSON-serialisable state (lists, floats, ints, strings)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a detector built with the same arguments."""


def check_state(state: dict[str, Any], owner: object) -> None:
    """Raise if ``state`` was not written by this version of ``owner``'s class."""
    kind = type(owner).__name__
    if state.get("type") != kind:
        raise ValueError(f"state was written by {state.get('type')!r}, not {kind!r}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"{kind} state version {state.get('version')} is not {STATE_VERSION}: "
            "written by another fedretrain version"
        )


def state_header(owner: object) -> dict[str, Any]:
    """The ``type`` and ``version`` keys every detector state starts with."""
    return {"type": type(owner).__name__, "version": STATE_VERSION}

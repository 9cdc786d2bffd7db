"""The trigger policy: when the monitor's evidence becomes a retraining run.

A decision is taken every monitoring period, "no retrain" included, and each carries its reason
and the numbers behind it, so a run's log explains every round it spent and every one it saved.

>>> policy = TriggerPolicy(TriggerConfig(on_drift=False, every=3))
>>> policy.trained(0, initial=True)
>>> fired = []
>>> for t in range(1, 8):
...     decision = policy.decide(t, accuracy=0.9, labelled=100)
...     if decision.retrain:
...         policy.trained(t)
...         fired.append((t, decision.reason))
>>> fired[0]
(3, 'schedule: 3 periods since the last training (every 3)')
>>> [t for t, _ in fired]
[3, 6]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedretrain.errors import ConfigError
from fedretrain.monitor.windows import parse_window, zone


class Alarm(Protocol):
    """What the policy reads from a detector's latest decision."""

    @property
    def drifted(self) -> bool: ...

    @property
    def reason(self) -> str: ...


@dataclass  # not frozen: Hydra merges the policy group's YAML into it
class TriggerConfig:
    """What may start a retrain (any one suffices), and what holds it back.

    Parameters
    ----------
    name : str
        A label for reports (``never``, ``periodic``, ``triggered``, ``oracle``...).
    on_drift : bool
        Retrain when a drift detector fires.
    on_change_points : bool
        Retrain exactly at the scenario's true change points: the oracle, simulation only.
    every : int or None
        Retrain when this many periods have passed since the last training.
    performance_floor : float or None
        Retrain when the serving model's prequential accuracy falls below this.
    min_new_labels : int or None
        Retrain once this many labelled samples arrived since the last training.
    cooldown : int
        Periods after a training during which nothing triggers (lets a reference settle).
    max_retrains : int or None
        Cap on retrains in a run (the initial training does not count).
    windows : list of str
        Deployment: wall-clock spans ``HH:MM-HH:MM`` of the day in which a retrain may start
        (off-peak hours, e.g. ``22:00-06:00``); a trigger outside them waits. Empty: any time.
    timezone : str
        The IANA time zone of ``windows`` and of the day ``max_rounds_per_day`` counts.
    max_rounds_per_day : int or None
        Deployment: the training rounds one calendar day may spend; a trigger that the day's
        remaining rounds cannot pay a whole retrain for (``retrain.max_rounds``) waits.
    """

    name: str = "triggered"
    on_drift: bool = True
    on_change_points: bool = False
    every: int | None = None
    performance_floor: float | None = None
    min_new_labels: int | None = None
    cooldown: int = 0
    max_retrains: int | None = None
    windows: list[str] = field(default_factory=list)
    timezone: str = "UTC"
    max_rounds_per_day: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for window in self.windows:
            try:
                parse_window(window)
            except ValueError as err:
                problems.append(f"policy.windows: {err}")
        try:
            zone(self.timezone)
        except ValueError as err:
            problems.append(f"policy.timezone: {err}")
        if self.max_rounds_per_day is not None and self.max_rounds_per_day < 1:
            problems.append(
                f"policy.max_rounds_per_day={self.max_rounds_per_day}: must be >= 1, or null"
            )
        if self.every is not None and self.every < 1:
            problems.append(f"policy.every={self.every}: must be >= 1, or null")
        if self.performance_floor is not None and not 0 <= self.performance_floor <= 1:
            problems.append(
                f"policy.performance_floor={self.performance_floor}: an accuracy in [0, 1], or null"
            )
        if self.min_new_labels is not None and self.min_new_labels < 1:
            problems.append(f"policy.min_new_labels={self.min_new_labels}: must be >= 1, or null")
        if self.cooldown < 0:
            problems.append(f"policy.cooldown={self.cooldown}: must be >= 0")
        if self.max_retrains is not None and self.max_retrains < 0:
            problems.append(f"policy.max_retrains={self.max_retrains}: must be >= 0, or null")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class Decision:
    """One period's verdict: ``retrain`` with ``reason``; ``causes`` names every trigger that
    fired (even when held back), ``stats`` the numbers a log line shows."""

    period: int
    retrain: bool
    reason: str
    causes: tuple[str, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)


class TriggerPolicy:
    """Turns a period's detections and scores into a :class:`Decision`; remembers trainings."""

    def __init__(self, config: TriggerConfig, change_points: Sequence[int] = ()) -> None:
        self.config = config
        self.change_points = frozenset(change_points)
        self._last_trained: int | None = None
        self._retrains = 0
        self._new_labels = 0

    def trained(self, period: int, initial: bool = False) -> None:
        """Record that a model was trained (or reused) at ``period``."""
        self._last_trained = period
        self._new_labels = 0
        if not initial and period > 0:
            self._retrains += 1

    def decide(
        self,
        period: int,
        accuracy: float,
        labelled: int,
        detections: Sequence[Alarm] = (),
    ) -> Decision:
        """Decide for ``period`` given the serving model's prequential ``accuracy`` on it."""
        c = self.config
        self._new_labels += labelled
        since = period - self._last_trained if self._last_trained is not None else period
        stats: dict[str, Any] = {
            "accuracy": accuracy,
            "new_labels": self._new_labels,
            "periods_since_training": since,
            "retrains": self._retrains,
        }
        causes = []
        alarms = [d for d in detections if d.drifted]
        if c.on_drift and alarms:
            causes.append("drift: " + "; ".join(d.reason for d in alarms))
        if c.on_change_points and period in self.change_points:
            causes.append(f"oracle: period {period} is a true change point")
        if c.every is not None and since >= c.every:
            causes.append(f"schedule: {since} periods since the last training (every {c.every})")
        if c.performance_floor is not None and accuracy < c.performance_floor:
            causes.append(f"performance: accuracy {accuracy:.4f} < floor {c.performance_floor}")
        if c.min_new_labels is not None and self._new_labels >= c.min_new_labels:
            causes.append(f"data volume: {self._new_labels} new labels >= {c.min_new_labels}")
        if not causes:
            return Decision(period, False, "no trigger fired", (), stats)
        if since <= c.cooldown and self._last_trained is not None and c.cooldown:
            last = self._last_trained
            reason = f"held back: cooldown of {c.cooldown} periods after training at {last}"
            return Decision(period, False, reason, tuple(causes), stats)
        if c.max_retrains is not None and self._retrains >= c.max_retrains:
            reason = f"held back: {self._retrains} retrains reached policy.max_retrains"
            return Decision(period, False, reason, tuple(causes), stats)
        return Decision(period, True, causes[0], tuple(causes), stats)

"""The monitor → trigger step, once: a period's statistics in, a decision with its evidence out.

The controller, resume's replay and the monitor benchmark all call :meth:`DriftWatch.observe`
and :meth:`DriftWatch.trained`, so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedretrain.monitor.base import Detection, Seed
from fedretrain.monitor.monitor import Monitor
from fedretrain.monitor.stats import PeriodStats
from fedretrain.monitor.trigger import Decision, TriggerPolicy


@dataclass(frozen=True)
class Observation:
    """What the monitor saw in a period and what the trigger policy decided from it."""

    detections: list[Detection]
    decision: Decision

    @property
    def retrain(self) -> bool:
        return self.decision.retrain

    @property
    def alarm_sites(self) -> frozenset[int]:
        """The sites an alarming detector named (a pooled alarm names none)."""
        return frozenset(s for d in self.detections if d.drifted for s in d.sites)

    def to_dict(self) -> dict[str, Any]:
        """The decision as ``decisions.jsonl`` records it."""
        d = self.decision
        return {
            "period": d.period,
            "retrain": d.retrain,
            "reason": d.reason,
            "causes": list(d.causes),
            "stats": d.stats,
            "detectors": [x.to_dict() for x in self.detections],
        }


class DriftWatch:
    """The monitor and the trigger policy behind one call per period.

    After a new model serves (trained or reused) the monitor starts a new reference, since the
    statistics it compares are the serving model's; seeded with the retrain's own period, so
    that drift in the very next period is caught.
    """

    def __init__(self, monitor: Monitor, policy: TriggerPolicy) -> None:
        self.monitor = monitor
        self.policy = policy

    def observe(self, stats: PeriodStats) -> Observation:
        """Feed one period's statistics; the policy decides on the serving model's scores."""
        total = stats.total
        detections = self.monitor.update(stats)
        decision = self.policy.decide(stats.period, total.accuracy, total.labelled, detections)
        return Observation(detections, decision)

    def trained(
        self,
        period: int,
        initial: bool = False,
        serving_changed: bool = True,
        seed: Seed | None = None,
    ) -> None:
        """A retrain ran at ``period``: the policy counts it; if what serves changed, the
        monitor starts a new reference (its statistics are the serving model's), from ``seed``
        where given. A candidate the gate refused changed nothing: the reference, and the
        evidence of drift, stay."""
        self.policy.trained(period, initial=initial)
        if serving_changed:
            self.monitor.reset(seed)

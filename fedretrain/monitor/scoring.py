"""Scoring alarms against the true change points of a scenario.

A change at period ``c`` is detected by the first alarm in ``[c, next change)``; its delay is
that alarm's period minus ``c`` (0: caught in the period the drift began). Every other alarm,
before the first change or after a change was already caught, is a false alarm.

>>> score = score_detections(change_points=[5], alarms=[5, 7], num_periods=10)
>>> score.delays, score.missed, score.false_alarms
([0], 0, 1)
>>> score_detections([3, 6], alarms=[2, 4], num_periods=9)
DetectionScore(delays=[1, None], missed=1, false_alarms=1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DetectionScore:
    delays: list[int | None]  # one per change point; None when it went undetected
    missed: int
    false_alarms: int


def score_detections(
    change_points: Sequence[int], alarms: Sequence[int], num_periods: int
) -> DetectionScore:
    """Match ``alarms`` (periods) to ``change_points`` (periods where the concept changed)."""
    points = sorted(set(change_points))
    bounds = [*points[1:], num_periods] if points else []
    remaining = sorted(alarms)
    delays: list[int | None] = []
    matched = 0
    for start, end in zip(points, bounds, strict=True):
        inside = [a for a in remaining if start <= a < end]
        delays.append(inside[0] - start if inside else None)
        matched += bool(inside)
    return DetectionScore(
        delays=delays,
        missed=sum(d is None for d in delays),
        false_alarms=len(remaining) - matched,
    )


@dataclass(frozen=True)
class SiteDetectionScore:
    """Alarms scored site by site: each site's own change points against the alarms of the
    monitor's tests that named that site, so that on a staggered schedule a change at one site
    is not "detected" by an alarm at another.

    ``by_concept`` groups the changes by the concept a site changed to (the true concepts of a
    simulation), so that a concept the monitor sees late stands out.
    """

    by_site: dict[int, DetectionScore]
    by_concept: dict[int, list[int | None]]  # concept -> the delays of the changes into it

    def to_dict(self) -> dict[str, object]:
        """The totals and the per-concept view (``summary.json``'s ``site_detection``)."""
        delays = [d for s in self.by_site.values() for d in s.delays]
        return {
            "changes": len(delays),
            "detected": sum(d is not None for d in delays),
            "missed": sum(d is None for d in delays),
            "false_alarms": sum(s.false_alarms for s in self.by_site.values()),
            "mean_delay": _mean_delay(delays),
            "by_concept": {
                str(k): {
                    "changes": len(v),
                    "detected": sum(d is not None for d in v),
                    "mean_delay": _mean_delay(v),
                }
                for k, v in sorted(self.by_concept.items())
            },
        }

    def by_site_dict(self) -> dict[str, dict[str, object]]:
        """Each site's delays and false alarms (``summary.json``'s ``site_detection_by_site``)."""
        return {
            str(site): {"delays": s.delays, "false_alarms": s.false_alarms}
            for site, s in sorted(self.by_site.items())
        }


def _mean_delay(delays: Sequence[int | None]) -> float | None:
    found = [d for d in delays if d is not None]
    return sum(found) / len(found) if found else None


def score_sites(
    changes: Mapping[int, Sequence[tuple[int, int]]],
    alarms: Mapping[int, Sequence[int]],
    num_periods: int,
) -> SiteDetectionScore:
    """Score each site's alarms against its own changes.

    ``changes``: site -> its ``(period, concept changed to)``, every site of the run (one with
    no change still counts its false alarms). ``alarms``: site -> periods whose alarm named it.

    >>> changes = {0: [(3, 1)], 1: [(5, 1)], 2: []}
    >>> score = score_sites(changes, {0: [3], 1: [3, 6], 2: [4]}, num_periods=8)
    >>> score.by_site[1]
    DetectionScore(delays=[1], missed=0, false_alarms=1)
    >>> score.to_dict()["false_alarms"], score.by_concept
    (2, {1: [0, 1]})

    Pooled, the same alarms look better than they are: site 0's alarm at period 3 and site 2's
    false one at 4 fall in the changes' windows, and only one alarm is false.

    >>> score_detections([3, 5], [3, 4, 6], 8)
    DetectionScore(delays=[0, 1], missed=0, false_alarms=1)
    """
    by_site: dict[int, DetectionScore] = {}
    by_concept: dict[int, list[int | None]] = {}
    for site, site_changes in changes.items():
        points = [p for p, _ in site_changes]
        score = score_detections(points, alarms.get(site, ()), num_periods)
        by_site[site] = score
        # score.delays follow the sorted change points; a site changes once per period.
        for (_, concept), delay in zip(sorted(set(site_changes)), score.delays, strict=True):
            by_concept.setdefault(concept, []).append(delay)
    return SiteDetectionScore(by_site, by_concept)

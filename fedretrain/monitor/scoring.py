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

from collections.abc import Sequence
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

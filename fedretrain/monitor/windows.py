"""When a deployed federation may retrain: wall-clock windows and a budget of rounds per day.

``policy.windows`` are ``HH:MM-HH:MM`` spans of the day in ``policy.timezone`` (a span may wrap
past midnight: ``22:00-06:00``); ``policy.max_rounds_per_day`` caps the training rounds started
on one calendar day there. A trigger that fires outside every window, or when the day's budget
cannot pay for a whole retrain (``retrain.max_rounds``), waits: the controller retrains at the
first period that may (:func:`schedule`), and its decision log says why it waited. Plain
Python, no Flower.

>>> w = RetrainWindows(["22:00-06:00"], "UTC", max_rounds_per_day=None)
>>> late, noon = 1_765_152_000.0 + 23 * 3600, 1_765_152_000.0 + 12 * 3600  # 2025-12-08 (UTC)
>>> w.why_wait(late, rounds_today=0, rounds_needed=10) is None
True
>>> w.why_wait(noon, rounds_today=0, rounds_needed=10)
'outside the retraining windows 22:00-06:00 (UTC; now 12:00)'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_SPAN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_window(text: str) -> tuple[time, time]:
    """``"HH:MM-HH:MM"`` as (start, end); raises ValueError naming the form it wants.

    >>> parse_window("22:00-06:30")
    (datetime.time(22, 0), datetime.time(6, 30))
    """
    match = _SPAN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a window HH:MM-HH:MM (24-hour clock), e.g. 22:00-06:00")
    h1, m1, h2, m2 = map(int, match.groups())
    if (h1, m1) == (h2, m2):
        raise ValueError(f"{text!r} is empty: a window must end at another time than it starts")
    return time(h1, m1), time(h2, m2)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises ValueError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None


class RetrainWindows:
    """The rule; its arguments are the ``policy`` keys of the same names."""

    def __init__(
        self, windows: Sequence[str], timezone: str, max_rounds_per_day: int | None
    ) -> None:
        self.windows = list(windows)
        self.timezone = timezone
        self.max_rounds_per_day = max_rounds_per_day
        self._spans = [parse_window(w) for w in windows]
        self._zone = zone(timezone)

    @property
    def active(self) -> bool:
        """Whether anything is restricted at all."""
        return bool(self._spans) or self.max_rounds_per_day is not None

    def local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, self._zone)

    def day(self, now: float) -> str:
        """The calendar day of ``now`` in the policy's time zone (what the budget counts by)."""
        return self.local(now).date().isoformat()

    def open_at(self, now: float) -> bool:
        """Whether ``now`` falls in a window (always, without windows)."""
        if not self._spans:
            return True
        clock = self.local(now).time()
        for start, end in self._spans:
            inside = start <= clock < end if start < end else clock >= start or clock < end
            if inside:
                return True
        return False

    def why_wait(self, now: float, rounds_today: int, rounds_needed: int) -> str | None:
        """Why a retrain of up to ``rounds_needed`` rounds may not start at ``now``, having
        trained ``rounds_today`` rounds today; None when it may."""
        local = self.local(now)
        if not self.open_at(now):
            spans = ", ".join(self.windows)
            return f"outside the retraining windows {spans} ({self.timezone}; now {local:%H:%M})"
        budget = self.max_rounds_per_day
        if budget is not None and rounds_today + rounds_needed > budget:
            return (
                f"today's budget of {budget} rounds (policy.max_rounds_per_day) has "
                f"{max(budget - rounds_today, 0)} left, and a retrain may take {rounds_needed} "
                f"(retrain.max_rounds); the next day starts at 00:00 {self.timezone}"
            )
        return None


WAIT = "wait"  # the policy fired this period; the retrain waits
PENDING = "pending"  # a trigger of an earlier period still waits
WAITED = "waited"  # a trigger that waited retrains now
WAITED_REASON = "waited since period"  # how a waited retrain's reason begins


@dataclass(frozen=True)
class Scheduled:
    """A period's verdict once the windows have had their say: whether to retrain, why, how
    the windows were involved (``""``, :data:`WAIT`, :data:`PENDING` or :data:`WAITED`), and
    the trigger that waits afterwards (``[period, cause]``; None when none does)."""

    retrain: bool
    reason: str
    schedule: str = ""
    waiting: tuple[int, str] | None = None


def policy_fired(retrain: bool, schedule: str) -> bool:
    """The trigger policy's own verdict, from what the period did and how it was scheduled
    (what resume's replay checks against the replayed policy)."""
    return {WAIT: True, PENDING: False, WAITED: False}.get(schedule, retrain)


def schedule(
    windows: RetrainWindows,
    fired: bool,
    reason: str,
    waiting: tuple[int, str] | None,
    period: int,
    now: float,
    rounds_today: int,
    rounds_needed: int,
) -> Scheduled:
    """Whether ``period`` retrains: the policy's verdict (``fired``, ``reason``), held to the
    windows and the day's budget. A trigger that may not start waits, and so does the first
    one of a run of waiting periods (``waiting``) until a period may start it.

    >>> w = RetrainWindows(["22:00-06:00"], "UTC", None)
    >>> noon, late = 43_200.0, 82_800.0  # 12:00 and 23:00 UTC on 1970-01-01
    >>> held = schedule(w, True, "drift: x", None, 3, noon, 0, 10)
    >>> held.retrain, held.schedule, held.waiting
    (False, 'wait', (3, 'drift: x'))
    >>> held.reason
    'waits: outside the retraining windows 22:00-06:00 (UTC; now 12:00); drift: x'
    >>> later = schedule(w, False, "no trigger fired", held.waiting, 4, late, 0, 10)
    >>> later.retrain, later.reason, later.waiting
    (True, 'waited since period 3: drift: x', None)
    """
    if not windows.active or (not fired and waiting is None):
        return Scheduled(fired, reason)
    why = windows.why_wait(now, rounds_today, rounds_needed)
    if why is None:
        if fired:
            return Scheduled(True, reason)
        assert waiting is not None
        return Scheduled(True, f"{WAITED_REASON} {waiting[0]}: {waiting[1]}", WAITED)
    if fired:
        held = waiting or (period, reason)
        return Scheduled(False, f"waits: {why}; {reason}", WAIT, held)
    assert waiting is not None
    return Scheduled(
        False, f"waits: {why}; the trigger of period {waiting[0]}: {waiting[1]}", PENDING, waiting
    )

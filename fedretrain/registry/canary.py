"""Canary serving: a few sites serve the candidate first, and their results decide.

:func:`choose_canary_sites` draws the canary sites, deterministically from a seed.
:func:`canary_verdict` compares how the sites fared, scored prequentially (on each period's
data before anything trains on it), and answers promote, rollback or continue.

The comparison is a difference in differences. Comparing the canary sites with the control
sites (those still served by the champion) in the same period would blame the candidate for
sites that are simply harder; comparing the canary sites with their own score a period earlier
would blame it for drift that hit every site. So each group is compared with itself in the
baseline period, when the champion served everyone, and the candidate is judged by how much
more (or less) the canary sites changed than the control sites::

    effect = (canary during - canary before) - (control during - control before)

The candidate is rolled back when ``effect < -margin`` and promoted otherwise, once the canary
sites have scored at least ``min_samples`` examples under it; until then the verdict is
continue. With a single site there is no control group, and the verdict falls back to the canary
site's change from its baseline.

>>> sites = list(range(10))
>>> choose_canary_sites(sites, fraction=0.2, seed=7) == choose_canary_sites(sites[::-1], 0.2, 7)
True
>>> before = {s: (80, 100) for s in sites}  # the champion everywhere: 0.80
>>> during = {s: (90, 100) if s in (0, 1) else (75, 100) for s in sites}
>>> verdict = canary_verdict((0, 1), before, during, margin=0.02, min_samples=150)
>>> verdict.action.value, round(verdict.effect, 4)  # (0.90 - 0.80) - (0.75 - 0.80)
('promote', 0.15)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from fedretrain.registry.scores import K, ScoreLike, Site, SiteScore, as_scores, pooled, site_order

_TIE = 1e-12


class CanaryAction(str, Enum):
    promote = "promote"  # the candidate serves everyone
    rollback = "rollback"  # the canary sites go back to the champion
    continue_ = "continue"  # not enough evidence yet: keep the canary running


def canary_size(num_sites: int, fraction: float) -> int:
    """How many of ``num_sites`` serve the candidate: ``fraction`` of them, halves rounded up,
    at least one, and at most all but one when there are two sites or more.

    >>> canary_size(10, 0.2), canary_size(10, 0.25), canary_size(10, 0.01), canary_size(3, 1.0)
    (2, 3, 1, 2)
    >>> canary_size(1, 0.5)
    1
    """
    if num_sites < 1:
        raise ValueError(f"num_sites={num_sites!r}: a canary needs at least one site")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} must lie in (0, 1]")
    wanted = math.floor(fraction * num_sites + 0.5)
    return max(1, min(wanted, num_sites - 1 if num_sites >= 2 else 1))


def choose_canary_sites(
    sites: Iterable[K], fraction: float, seed: int | Sequence[int]
) -> tuple[K, ...]:
    """Draw the canary sites: the same ``sites`` and ``seed`` always give the same draw.

    Parameters
    ----------
    sites : iterable of site ids
        Every site that serves; their order does not matter.
    fraction : float
        The share of sites to serve the candidate, in (0, 1]; see :func:`canary_size`.
    seed : int or sequence of int
        Seeds :func:`numpy.random.default_rng`; pass e.g. ``[runtime.seed, period]`` for a
        different draw per candidate that a resumed run repeats.

    Returns
    -------
    tuple
        The chosen sites, sorted (ints numerically).
    """
    ordered = sorted(sites, key=site_order)
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"sites {ordered} contain duplicates")
    k = canary_size(len(ordered), fraction)
    picked = np.random.default_rng(seed).permutation(len(ordered))[:k]
    return tuple(sorted((ordered[i] for i in picked), key=site_order))


@dataclass(frozen=True)
class CanaryVerdict:
    """What to do with a candidate under canary, why, and the pooled scores behind it."""

    action: CanaryAction
    reason: str
    effect: float  # difference in differences; NaN when not computed
    canary_before: SiteScore
    canary_during: SiteScore
    control_before: SiteScore
    control_during: SiteScore
    excluded: tuple[Site, ...]  # sites without a score in the baseline or in this period

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (NaN as None), for an event payload or a log line."""

        def score(s: SiteScore) -> dict[str, float | int]:
            return {"correct": s.correct, "total": s.total}

        return {
            "action": self.action.value,
            "reason": self.reason,
            "effect": self.effect if math.isfinite(self.effect) else None,
            "canary_before": score(self.canary_before),
            "canary_during": score(self.canary_during),
            "control_before": score(self.control_before),
            "control_during": score(self.control_during),
            "excluded": list(self.excluded),
        }


def canary_verdict(
    canary_sites: Collection[Site],
    before: Mapping[Site, ScoreLike],
    during: Mapping[Site, ScoreLike],
    *,
    margin: float,
    min_samples: int,
) -> CanaryVerdict:
    """Promote, roll back or continue a canary, by the difference in differences above.

    Parameters
    ----------
    canary_sites : collection of site ids
        The sites serving the candidate.
    before : mapping of site to SiteScore or (correct, total)
        Every site's prequential score in the baseline period, when the champion served all
        of them (the period before the canary began).
    during : mapping of site to SiteScore or (correct, total)
        Every site's prequential score since the canary began, summed over its periods
        (:func:`fedretrain.registry.scores.summed`): the canary sites under the candidate,
        the others under the champion.
    margin : float
        How much worse than the champion the candidate may do before it is rolled back (>= 0).
    min_samples : int
        Examples the canary sites must score under the candidate before a verdict (>= 1).

    Returns
    -------
    CanaryVerdict
    """
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin={margin!r} must be a finite number >= 0")
    if min_samples < 1:
        raise ValueError(f"min_samples={min_samples!r} must be >= 1")
    if not canary_sites:
        raise ValueError("canary_sites is empty: a canary needs at least one site")
    base, now = as_scores(before), as_scores(during)
    usable = {s for s in base.keys() & now.keys() if base[s].total and now[s].total}
    excluded = tuple(sorted((set(now) | set(canary_sites)) - usable, key=site_order))
    canary = usable & set(canary_sites)
    control = usable - canary
    cb, cd = pooled(base[s] for s in canary), pooled(now[s] for s in canary)
    kb, kd = pooled(base[s] for s in control), pooled(now[s] for s in control)

    def verdict(action: CanaryAction, reason: str, effect: float = math.nan) -> CanaryVerdict:
        return CanaryVerdict(action, reason, effect, cb, cd, kb, kd, excluded)

    if cd.total < min_samples:
        return verdict(
            CanaryAction.continue_,
            f"the canary sites scored {cd.total} of the {min_samples} examples needed under "
            "the candidate",
        )
    canary_change = cd.accuracy - cb.accuracy
    if control:
        control_change = kd.accuracy - kb.accuracy
        effect = canary_change - control_change
        evidence = (
            f"canary {cb.accuracy:.4f} -> {cd.accuracy:.4f}, control "
            f"{kb.accuracy:.4f} -> {kd.accuracy:.4f}, effect {effect:+.4f}"
        )
    else:
        effect = canary_change
        evidence = (
            f"no control site: canary {cb.accuracy:.4f} -> {cd.accuracy:.4f}, effect {effect:+.4f}"
        )
    if effect < -margin - _TIE:
        return verdict(CanaryAction.rollback, f"{evidence} < -margin {margin:g}", effect)
    return verdict(
        CanaryAction.promote, f"{evidence} >= -margin {margin:g} over {cd.total} examples", effect
    )

"""The validation gate: may a candidate replace the champion?

Both models are evaluated on every site's holdout. The candidate passes when the federation's
accuracy (summed correct over summed examples, on the sites that evaluated both models) is at
least the champion's minus ``global_margin`` and no site loses more than ``site_margin``: a
better average must not hide a site the candidate serves badly. A tie at a margin passes.

>>> decision = gate(
...     candidate={1: (45, 50), 2: (30, 50)},
...     champion={1: (40, 50), 2: (40, 50)},
...     global_margin=0.05,
...     site_margin=0.1,
... )
>>> decision.promote, decision.candidate_accuracy, decision.champion_accuracy
(False, 0.75, 0.8)
>>> decision.reason
'site 2 regresses by 0.2000 (0.6000 vs 0.8000), more than site_margin 0.1'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedretrain.metrics import group_recalls
from fedretrain.registry.scores import (
    K,
    ScoreLike,
    Site,
    SiteScore,
    as_scores,
    pooled,
    site_order,
)

_TIE = 1e-12  # a difference this small is a tie: 0.8 - 0.05 must not fail 0.75 by rounding


@dataclass(frozen=True)
class GateRow:
    """One site's comparison.

    ``counted`` is False when a side did not evaluate at the site, or evaluated fewer than
    ``min_site_total`` examples: such a site is shown but cannot block a promotion.
    """

    site: Site
    candidate: SiteScore | None
    champion: SiteScore | None
    delta: float  # candidate - champion accuracy; NaN when a side is missing
    counted: bool
    regressed: bool  # counted and delta < -site_margin

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "candidate_correct": None if self.candidate is None else self.candidate.correct,
            "candidate_total": None if self.candidate is None else self.candidate.total,
            "champion_correct": None if self.champion is None else self.champion.correct,
            "champion_total": None if self.champion is None else self.champion.total,
            "delta": _finite_or_none(self.delta),
            "counted": self.counted,
            "regressed": self.regressed,
        }


@dataclass(frozen=True)
class GroupRow:
    """One group of users' comparison: each model's recall on the group's holdout samples at
    every site (macro over the classes the group has, :func:`fedretrain.metrics.group_recalls`).
    ``counted`` is False for a group with fewer than ``min_group_total`` samples."""

    group: int
    candidate: float
    champion: float
    samples: int
    delta: float
    counted: bool
    regressed: bool  # counted and delta < -group_margin

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "candidate_recall": _finite_or_none(self.candidate),
            "champion_recall": _finite_or_none(self.champion),
            "samples": self.samples,
            "delta": _finite_or_none(self.delta),
            "counted": self.counted,
            "regressed": self.regressed,
        }


@dataclass(frozen=True)
class Memory:
    """Backward transfer: both models on the holdouts of earlier periods, pooled over the
    sites that evaluated both; ``delta`` is candidate - champion (negative: forgetting)."""

    candidate: float
    champion: float
    delta: float
    forgetting_margin: float | None
    forgets: bool  # delta < -forgetting_margin

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_accuracy": _finite_or_none(self.candidate),
            "champion_accuracy": _finite_or_none(self.champion),
            "backward_transfer": _finite_or_none(self.delta),
            "forgetting_margin": self.forgetting_margin,
            "forgets": self.forgets,
        }


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict, its reason, and the per-site rows behind it."""

    promote: bool
    reason: str
    candidate_accuracy: float  # on the sites that evaluated both models; NaN when none did
    champion_accuracy: float
    global_margin: float
    site_margin: float
    rows: tuple[GateRow, ...]
    groups: tuple[GroupRow, ...] = ()
    group_margin: float | None = None
    memory: Memory | None = None

    @property
    def regressed_sites(self) -> tuple[Site, ...]:
        return tuple(row.site for row in self.rows if row.regressed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (NaN as None), for an event payload or a log line."""
        return {
            "promote": self.promote,
            "reason": self.reason,
            "candidate_accuracy": _finite_or_none(self.candidate_accuracy),
            "champion_accuracy": _finite_or_none(self.champion_accuracy),
            "global_margin": self.global_margin,
            "site_margin": self.site_margin,
            "rows": [row.to_dict() for row in self.rows],
            "group_margin": self.group_margin,
            "groups": [row.to_dict() for row in self.groups],
            "memory": None if self.memory is None else self.memory.to_dict(),
        }


def gate(
    candidate: Mapping[K, ScoreLike],
    champion: Mapping[K, ScoreLike] | None,
    global_margin: float,
    site_margin: float,
    *,
    min_site_total: int = 1,
    candidate_groups: np.ndarray | None = None,
    champion_groups: np.ndarray | None = None,
    group_margin: float | None = None,
    candidate_memory: Mapping[K, ScoreLike] | None = None,
    champion_memory: Mapping[K, ScoreLike] | None = None,
    forgetting_margin: float | None = None,
) -> GateDecision:
    """Compare a candidate with the champion on the sites' holdouts.

    Parameters
    ----------
    candidate, champion : mapping of site to SiteScore or (correct, total)
        Each model's evaluation per site. ``champion=None`` means there is no champion yet:
        the candidate passes. An empty champion mapping means the champion was not evaluated
        anywhere, and the candidate does not pass on no evidence.
    global_margin : float
        How far below the champion's federation accuracy the candidate may fall (>= 0).
    site_margin : float
        How far below the champion's accuracy at any one site the candidate may fall (>= 0).
    min_site_total : int
        Sites where either side evaluated fewer examples than this cannot block a promotion:
        one wrong answer out of three is a 33-point regression. Groups with fewer samples than
        this cannot either.
    candidate_groups, champion_groups : ndarray or None
        Each model's confusion matrix per group of users, ``(groups, classes, classes)``,
        summed over the sites; None without groups.
    group_margin : float or None
        How far below the champion's recall on any one group the candidate may fall; None:
        the groups are compared and reported but block nothing.
    candidate_memory, champion_memory : mapping of site to SiteScore or (correct, total)
        Each model per site on the holdouts of earlier periods (``release.memory_periods``);
        None: not evaluated.
    forgetting_margin : float or None
        How far below the champion's accuracy on those holdouts the candidate may fall;
        None: backward transfer is reported but blocks nothing.

    Returns
    -------
    GateDecision
        ``promote`` and the reason, the two accuracies and one row per site.
    """
    for name, value in (("global_margin", global_margin), ("site_margin", site_margin)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    if min_site_total < 1:
        raise ValueError(f"min_site_total={min_site_total!r} must be >= 1")
    cand = as_scores(candidate)
    champ = None if champion is None else as_scores(champion)
    rows = _rows(cand, champ or {}, site_margin, min_site_total)
    both = [r for r in rows if r.candidate is not None and r.champion is not None]
    cand_acc = pooled(r.candidate for r in both if r.candidate).accuracy
    champ_acc = pooled(r.champion for r in both if r.champion).accuracy

    groups = _group_rows(candidate_groups, champion_groups, group_margin, min_site_total)
    memory = _memory(candidate_memory, champion_memory, forgetting_margin)

    def decided(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote,
            reason,
            cand_acc,
            champ_acc,
            global_margin,
            site_margin,
            tuple(rows),
            tuple(groups),
            group_margin,
            memory,
        )

    if not any(s.total for s in cand.values()):
        return decided(False, "the candidate was evaluated on no site")
    if champ is None:
        return decided(True, "no champion to compare against")
    if not both:
        return decided(False, "no site evaluated both the candidate and the champion")
    problems = []
    if cand_acc < champ_acc - global_margin - _TIE:
        problems.append(
            f"candidate {cand_acc:.4f} < champion {champ_acc:.4f} - global_margin "
            f"{global_margin:g} on {len(both)} sites"
        )
    problems += [
        f"site {r.site} regresses by {-r.delta:.4f} ({r.candidate.accuracy:.4f} vs "
        f"{r.champion.accuracy:.4f}), more than site_margin {site_margin:g}"
        for r in rows
        if r.regressed and r.candidate and r.champion
    ]
    problems += [
        f"group {g.group} loses {-g.delta:.4f} of recall ({g.candidate:.4f} vs "
        f"{g.champion:.4f}), more than group_margin {group_margin:g}"
        for g in groups
        if g.regressed
    ]
    if memory is not None and memory.forgets:
        problems.append(
            f"forgets: {memory.candidate:.4f} vs the champion's {memory.champion:.4f} on the "
            f"earlier periods' holdouts, more than forgetting_margin {forgetting_margin:g} below"
        )
    if problems:
        return decided(False, "; ".join(problems))
    also = (
        "" if group_margin is None or not groups else f" and no group by more than {group_margin:g}"
    )
    return decided(
        True,
        f"candidate {cand_acc:.4f} >= champion {champ_acc:.4f} - global_margin "
        f"{global_margin:g} on {len(both)} sites, no site regresses by more than "
        f"{site_margin:g}{also}",
    )


def _memory(
    candidate: Mapping[K, ScoreLike] | None,
    champion: Mapping[K, ScoreLike] | None,
    margin: float | None,
) -> Memory | None:
    """Backward transfer over the sites where both models scored some earlier holdout."""
    if candidate is None or champion is None:
        return None
    if margin is not None and (not math.isfinite(margin) or margin < 0):
        raise ValueError(f"forgetting_margin={margin!r} must be a finite number >= 0, or None")
    cand, champ = as_scores(candidate), as_scores(champion)
    both = [s for s in cand if s in champ and cand[s].total and champ[s].total]
    if not both:
        return None
    c = pooled(cand[s] for s in both).accuracy
    h = pooled(champ[s] for s in both).accuracy
    forgets = margin is not None and c < h - margin - _TIE
    return Memory(c, h, c - h, margin, forgets)


def _group_rows(
    candidate: np.ndarray | None,
    champion: np.ndarray | None,
    margin: float | None,
    min_total: int,
) -> list[GroupRow]:
    """One row per group when both models were evaluated by group (and alike)."""
    if candidate is None or champion is None or np.shape(candidate) != np.shape(champion):
        return []
    if margin is not None and (not math.isfinite(margin) or margin < 0):
        raise ValueError(f"group_margin={margin!r} must be a finite number >= 0, or None")
    cand, champ = group_recalls(candidate), group_recalls(champion)
    rows = []
    for g in range(len(cand)):
        samples = int(min(np.sum(candidate[g]), np.sum(champion[g])))
        delta = float(cand[g] - champ[g])
        counted = samples >= min_total and math.isfinite(delta)
        regressed = counted and margin is not None and delta < -margin - _TIE
        rows.append(
            GroupRow(g, float(cand[g]), float(champ[g]), samples, delta, counted, regressed)
        )
    return rows


def _rows(
    cand: dict[K, SiteScore],
    champ: dict[K, SiteScore],
    site_margin: float,
    min_site_total: int,
) -> list[GateRow]:
    rows = []
    for site in sorted(set(cand) | set(champ), key=site_order):
        c = cand.get(site)
        h = champ.get(site)
        if c is not None and c.total == 0:
            c = None  # evaluated nothing: no evidence either way
        if h is not None and h.total == 0:
            h = None
        delta = c.accuracy - h.accuracy if c is not None and h is not None else math.nan
        counted = c is not None and h is not None and min(c.total, h.total) >= min_site_total
        regressed = counted and delta < -site_margin - _TIE
        rows.append(GateRow(site, c, h, delta, counted, regressed))
    return rows


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None

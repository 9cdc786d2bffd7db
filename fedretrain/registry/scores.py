"""Per-site evaluation results as counts, so that sites add up exactly.

The gate and the canary both compare two models site by site and over the whole federation.
Accuracies do not average across sites of different sizes; counts do: the federation's
accuracy is the summed correct predictions over the summed examples.

>>> a = SiteScore(correct=45, total=50)
>>> b = SiteScore.from_accuracy(0.5, 150)
>>> a.accuracy, b.correct, pooled([a, b]).accuracy
(0.9, 75.0, 0.6)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

Site = Hashable  # a site id: Flower node ids are ints, folder-based sites may be names
K = TypeVar("K", bound=Hashable)  # a caller's site ids, whatever hashable type they are


@dataclass(frozen=True)
class SiteScore:
    """Correct predictions out of ``total`` examples (``correct`` may be fractional).

    Parameters
    ----------
    correct : float
        Correct predictions; fractional when rebuilt from an accuracy.
    total : int
        Examples evaluated.
    """

    correct: float
    total: int

    def __post_init__(self) -> None:
        if isinstance(self.total, bool) or int(self.total) != self.total or self.total < 0:
            raise ValueError(f"total={self.total!r} must be a whole number >= 0")
        if not math.isfinite(self.correct) or not 0 <= self.correct <= self.total:
            raise ValueError(f"correct={self.correct!r} must lie in [0, total={self.total}]")
        object.__setattr__(self, "correct", float(self.correct))
        object.__setattr__(self, "total", int(self.total))

    @classmethod
    def from_accuracy(cls, accuracy: float, total: int) -> SiteScore:
        """A score reported as an accuracy over ``total`` examples."""
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy={accuracy!r} must lie in [0, 1]")
        return cls(accuracy * total, total)

    @property
    def accuracy(self) -> float:
        """``correct / total``; NaN for a site that evaluated nothing."""
        return self.correct / self.total if self.total else math.nan


ScoreLike = SiteScore | tuple[float, int]  # (correct, total)


def as_score(value: ScoreLike) -> SiteScore:
    """A :class:`SiteScore` from itself or a ``(correct, total)`` pair."""
    if isinstance(value, SiteScore):
        return value
    correct, total = value
    return SiteScore(correct, total)


def as_scores(scores: Mapping[K, ScoreLike]) -> dict[K, SiteScore]:
    """Every value of ``scores`` as a :class:`SiteScore`, in the mapping's order."""
    return {site: as_score(value) for site, value in scores.items()}


def pooled(scores: Iterable[SiteScore]) -> SiteScore:
    """The sum of ``scores``: the accuracy of all their examples together."""
    correct, total = 0.0, 0
    for score in scores:
        correct += score.correct
        total += score.total
    return SiteScore(correct, total)


def site_order(site: Site) -> tuple[int, object]:
    """A sort key that orders int ids numerically and puts any other id after them by text."""
    if isinstance(site, int) and not isinstance(site, bool):
        return (0, site)
    return (1, str(site))


def summed(*scores: Mapping[Site, ScoreLike]) -> dict[Site, SiteScore]:
    """Per-site sums of several periods' scores (a site missing from one adds nothing).

    >>> summed({1: (8, 10)}, {1: (9, 10), 2: (5, 10)})
    {1: SiteScore(correct=17.0, total=20), 2: SiteScore(correct=5.0, total=10)}
    """
    out: dict[Site, SiteScore] = {}
    for mapping in scores:
        for site, value in as_scores(mapping).items():
            out[site] = pooled([out[site], value]) if site in out else value
    return out

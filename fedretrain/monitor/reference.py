"""Per-site references: what each site looked like under the serving model, as summable counts.

A site's reference is the sum of its first ``periods`` reports after a reset; until it is
complete the site is not tested, neither alone nor in the pooled test. A site first seen later
(a late joiner, or one not sampled early) therefore builds its own reference from its own first
reports and is tested from then on. The pooled test compares the sum of the tested sites' current
counts with the sum of the same sites' references, so a change in which sites report is not
mistaken for drift.

>>> import numpy as np
>>> refs = SiteReferences(periods=2)
>>> refs.split({0: np.array([1, 2]), 1: np.array([3, 4])})
[]
>>> refs.split({0: np.array([1, 2]), 2: np.array([5, 5])})
[]
>>> refs.split({0: np.array([9, 9]), 1: np.array([3, 4]), 2: np.array([5, 5])})
[0]
>>> refs.reference(0).tolist()
[2, 4]
>>> refs.split({1: np.array([3, 4]), 2: np.array([5, 5])})
[1, 2]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

POOLED = -1  # the pooled stream's key where streams are keyed by site id (ids are >= 0)


class SiteReferences:
    """Each site's reference: the sum of its first ``periods`` reports (then optionally more).

    Parameters
    ----------
    periods : int
        Reports a site contributes before it is tested.
    """

    def __init__(self, periods: int) -> None:
        if periods < 1:
            raise ValueError(f"reference_periods={periods}: must be >= 1")
        self.periods = periods
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def split(self, current: Mapping[int, np.ndarray]) -> list[int]:
        """The sites with a complete reference, sorted; every other site's counts join its own."""
        ready = []
        for site, counts in current.items():
            if self.ready(site):
                ready.append(site)
            else:
                self.add(site, counts)
        return sorted(ready)

    def ready(self, site: int) -> bool:
        return self._counts.get(site, 0) >= self.periods

    def add(self, site: int, counts: np.ndarray) -> None:
        """Add one report to a site's reference (self-starting detectors grow it every period)."""
        counts = np.asarray(counts)
        if site in self._sums:
            self._sums[site] = self._sums[site] + counts
        else:
            self._sums[site] = counts.copy()
        self._counts[site] = self._counts.get(site, 0) + 1

    def reference(self, site: int) -> np.ndarray:
        return self._sums[site]

    def reports(self, site: int) -> int:
        """How many reports a site's reference sums (noisy counts: its noise variance grows so)."""
        return self._counts.get(site, 0)

    def pooled(self, sites: list[int]) -> np.ndarray:
        """The sum of the given sites' references."""
        return np.sum([self._sums[s] for s in sites], axis=0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sites": [
                [site, self._counts[site], self._sums[site].tolist()] for site in sorted(self._sums)
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for site, count, sums in state["sites"]:
            self._sums[int(site)] = np.asarray(sums)
            self._counts[int(site)] = int(count)

"""Per-site references: what each site looked like under the serving model, as summable counts.

A site's reference is the sum of its first ``periods`` reports after a reset; until it is
complete the site is not tested, neither alone nor in the pooled test. A site first seen later
(a late joiner, or one not sampled early) therefore builds its own reference from its own first
reports and is tested from then on. The pooled test compares the sum of the tested sites'
current counts with the sum of the same sites' references, so a change in which sites report is
not mistaken for drift.

A *seeded* site (:meth:`SiteReferences.seed`: the counts a retrained model was validated on) is
tested from its first report after the reset, and each tested report then joins its reference
until that holds ``periods`` reports: no period after a retrain goes untested.

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
>>> refs.reset()
>>> refs.seed(0, np.array([1, 1]))
>>> refs.split({0: np.array([2, 2]), 1: np.array([3, 4])})  # site 0 is tested at once
[0]
>>> refs.reference(0).tolist()  # against its seed; the report joins it afterwards
[1, 1]
>>> refs.split({0: np.array([4, 4])}), refs.reference(0).tolist()
([0], [3, 3])
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
        Reports a site contributes before it is tested, unless it was seeded.
    """

    def __init__(self, periods: int) -> None:
        if periods < 1:
            raise ValueError(f"reference_periods={periods}: must be >= 1")
        self.periods = periods
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}  # reports summed, the seed not counted
        self._noisy: dict[int, int] = {}  # privatized reports summed (their noise adds up)
        self._seeded: set[int] = set()
        self._pending: dict[int, np.ndarray] = {}  # tested reports that join after the test

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._noisy.clear()
        self._seeded.clear()
        self._pending.clear()

    def seed(self, site: int, counts: np.ndarray, noisy_reports: int = 1) -> None:
        """Start ``site``'s reference from ``counts`` (after a reset); the site is tested from
        its next report. ``noisy_reports``: privatized reports the counts sum (0 for exact
        ones, such as a holdout's scores)."""
        self._sums[site] = np.asarray(counts).copy()
        self._counts[site] = 0
        self._noisy[site] = noisy_reports
        self._seeded.add(site)

    def split(self, current: Mapping[int, np.ndarray], grow: bool = True) -> list[int]:
        """The sites to test, sorted: those with a complete reference, and seeded ones. Every
        other site's counts join its own reference now; a seeded site's (with ``grow``) after
        this period's test, until its reference is complete. A self-starting detector, which
        adds every tested report itself, passes ``grow=False``."""
        for site, counts in self._pending.items():
            self.add(site, counts)
        self._pending.clear()
        tested = []
        for site, counts in current.items():
            if self.ready(site):
                tested.append(site)
                if grow and self._counts[site] < self.periods:
                    self._pending[site] = np.asarray(counts)
            else:
                self.add(site, counts)
        return sorted(tested)

    def ready(self, site: int) -> bool:
        return site in self._seeded or self._counts.get(site, 0) >= self.periods

    def add(self, site: int, counts: np.ndarray) -> None:
        """Add one report to a site's reference (self-starting detectors grow it every period)."""
        counts = np.asarray(counts)
        if site in self._sums:
            self._sums[site] = self._sums[site] + counts
        else:
            self._sums[site] = counts.copy()
        self._counts[site] = self._counts.get(site, 0) + 1
        self._noisy[site] = self._noisy.get(site, 0) + 1

    def reference(self, site: int) -> np.ndarray:
        return self._sums[site]

    def reports(self, site: int) -> int:
        """How many privatized reports a site's reference sums (noisy counts: its noise
        variance grows so)."""
        return self._noisy.get(site, 0)

    def pooled(self, sites: list[int]) -> np.ndarray:
        """The sum of the given sites' references."""
        return np.sum([self._sums[s] for s in sites], axis=0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sites": [
                [site, self._counts[site], self._sums[site].tolist(), self._noisy[site]]
                for site in sorted(self._sums)
            ],
            "seeded": sorted(self._seeded),
            "pending": [[site, c.tolist()] for site, c in sorted(self._pending.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for site, count, sums, *noisy in state["sites"]:  # no noisy count: written before seeds
            self._sums[int(site)] = np.asarray(sums)
            self._counts[int(site)] = int(count)
            self._noisy[int(site)] = int(noisy[0]) if noisy else int(count)
        self._seeded = {int(s) for s in state.get("seeded", [])}
        self._pending = {int(s): np.asarray(c) for s, c in state.get("pending", [])}

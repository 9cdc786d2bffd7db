"""Drift schedules: which concept each site's data follows in each monitoring period.

A :class:`Schedule` is a sites x periods matrix of concept ids, as in FedDrift's change-point
matrices, plus an optional second matrix and a share for gradual drift: a window of site ``s``
at period ``t`` draws a share ``mix[s, t]`` of its samples from concept ``mix_to[s, t]`` and the
rest from ``concepts[s, t]``.

The generators below build the common shapes. Each is a plain function called as
``gen(num_sites=..., num_periods=..., seed=..., **params)``: a scenario config gives ``params``
with ``_partial_: true`` and fedretrain supplies the run's size and seed.

>>> s = abrupt(num_sites=4, num_periods=6, seed=0, at=3, sites=0.5)
>>> s.concepts
array([[0, 0, 0, 1, 1, 1],
       [0, 0, 0, 1, 1, 1],
       [0, 0, 0, 0, 0, 0],
       [0, 0, 0, 0, 0, 0]])
>>> s.change_points(), s.affected_sites(3)
([3], [0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

__all__ = [
    "Schedule",
    "abrupt",
    "from_matrix",
    "gradual",
    "random_change_points",
    "recurring",
    "staggered",
    "stationary",
]

# Entropy tag of the schedule generator's per-site RNG; sample_window uses another tag so that
# no two uses of the run seed share a stream.
_SCHEDULE_RNG_TAG = 3


@dataclass(frozen=True, eq=False)
class Schedule:
    """Per-site, per-period concept ids, optionally blended for gradual drift.

    Parameters
    ----------
    concepts : np.ndarray
        ``(num_sites, num_periods)`` non-negative integer concept ids.
    mix_to : np.ndarray or None
        Same shape: the concept blended in at each site and period (gradual drift).
    mix : np.ndarray or None
        Same shape, floats in ``[0, 1]``: the share of each window drawn from ``mix_to``.
        ``mix_to`` and ``mix`` are given together or not at all.

    The arrays are copied and made read-only. Equality is identity; compare the arrays.

    >>> s = Schedule(np.array([[0, 1, 1], [0, 0, 1]]))
    >>> s.num_sites, s.num_periods, s.change_points(site=1), s.used_concepts
    (2, 3, [2], [0, 1])
    """

    concepts: np.ndarray
    mix_to: np.ndarray | None = None
    mix: np.ndarray | None = None

    def __post_init__(self) -> None:
        concepts = _id_matrix(self.concepts, "concepts")
        object.__setattr__(self, "concepts", concepts)
        if (self.mix_to is None) != (self.mix is None):
            raise ValueError(
                "Schedule: give mix_to and mix together (gradual drift) or neither (abrupt)"
            )
        if self.mix_to is None or self.mix is None:
            return
        mix_to = _id_matrix(self.mix_to, "mix_to")
        mix = np.array(self.mix, dtype=np.float64)
        for name, arr in (("mix_to", mix_to), ("mix", mix)):
            if arr.shape != concepts.shape:
                raise ValueError(
                    f"Schedule: {name} has shape {arr.shape} but concepts has {concepts.shape}; "
                    "give one entry per site and period"
                )
        if not np.all((mix >= 0) & (mix <= 1)):
            bad = mix[~((mix >= 0) & (mix <= 1))][0]
            raise ValueError(
                f"Schedule: mix is the share drawn from mix_to and must lie in [0, 1]; got {bad}"
            )
        mix.setflags(write=False)
        object.__setattr__(self, "mix_to", mix_to)
        object.__setattr__(self, "mix", mix)

    @property
    def num_sites(self) -> int:
        return int(self.concepts.shape[0])

    @property
    def num_periods(self) -> int:
        return int(self.concepts.shape[1])

    @property
    def used_concepts(self) -> list[int]:
        """The concept ids some window draws from (with a positive share), sorted."""
        low, high, share = self._canonical()
        return sorted(set(low.ravel().tolist()) | set(high[share > 0].tolist()))

    def mixture(self, site: int, period: int) -> dict[int, float]:
        """The concepts site ``site``'s window at ``period`` draws from, with their shares.

        >>> s = Schedule(np.array([[0, 0]]), mix_to=np.array([[1, 0]]), mix=np.array([[0.25, 1]]))
        >>> s.mixture(0, 0), s.mixture(0, 1)
        ({0: 0.75, 1: 0.25}, {0: 1.0})
        """
        self._check_site(site)
        self._check_period(period)
        low, high, share = (a[site, period] for a in self._canonical())
        if share == 0:
            return {int(low): 1.0}
        return {int(low): float(1.0 - share), int(high): float(share)}

    def change_points(self, site: int | None = None) -> list[int]:
        """Periods ``t >= 1`` where the site's (or, for ``None``, any site's) mixture changes."""
        changed = self._changed()
        rows = changed if site is None else changed[[self._check_site(site)]]
        return [int(t) + 1 for t in np.flatnonzero(rows.any(axis=0))]

    def site_changes(self) -> dict[int, list[tuple[int, int]]]:
        """Each site's change points with the concept it changed to (the larger share of its
        mixture there): the truth per-site detection is scored against.

        >>> Schedule(np.array([[0, 1, 1], [0, 0, 2]])).site_changes()
        {0: [(1, 1)], 1: [(2, 2)]}
        """
        out = {}
        for site in range(self.num_sites):
            mixtures = [(t, self.mixture(site, t)) for t in self.change_points(site)]
            out[site] = [(t, max(m, key=lambda k: m[k])) for t, m in mixtures]
        return out

    def affected_sites(self, period: int) -> list[int]:
        """Sites whose mixture at ``period`` differs from ``period - 1`` (none at period 0)."""
        self._check_period(period)
        if period == 0:
            return []
        return [int(s) for s in np.flatnonzero(self._changed()[:, period - 1])]

    def _changed(self) -> np.ndarray:
        """``(num_sites, num_periods - 1)``: whether period ``t + 1``'s mixture differs from t's."""
        low, high, share = self._canonical()
        changed: np.ndarray = (
            (low[:, 1:] != low[:, :-1])
            | (high[:, 1:] != high[:, :-1])
            | (share[:, 1:] != share[:, :-1])
        )
        return changed

    def _canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each window's mixture as (lower id, higher id, share of the higher id)."""
        if self.mix_to is None or self.mix is None:
            return self.concepts, self.concepts, np.zeros(self.concepts.shape)
        a, b, m = self.concepts, self.mix_to, self.mix
        pure = (m == 0) | (a == b) | (m == 1)
        only = np.where(m == 1, b, a)
        low = np.where(pure, only, np.minimum(a, b))
        high = np.where(pure, only, np.maximum(a, b))
        share = np.where(pure, 0.0, np.where(a < b, m, 1.0 - m))
        return low, high, share

    def _check_site(self, site: int) -> int:
        if not 0 <= site < self.num_sites:
            raise ValueError(f"site {site} outside the schedule's sites [0, {self.num_sites})")
        return site

    def _check_period(self, period: int) -> int:
        if not 0 <= period < self.num_periods:
            raise ValueError(
                f"period {period} outside the schedule's periods [0, {self.num_periods})"
            )
        return period


def _id_matrix(values: object, name: str) -> np.ndarray:
    arr = np.array(values)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"Schedule: {name} must be a non-empty (num_sites, num_periods) matrix, "
            f"got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.all(np.mod(arr, 1) == 0)):
        raise ValueError(f"Schedule: {name} holds concept ids and must be whole numbers")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"Schedule: {name} holds concept ids, which start at 0; got {arr.min()}")
    arr.setflags(write=False)
    return arr


# ------------------------------------------------------------------------------- generators


def _check_size(gen: str, num_sites: int, num_periods: int) -> None:
    if num_sites < 1 or num_periods < 1:
        raise ValueError(
            f"{gen}: needs num_sites >= 1 and num_periods >= 1, got {num_sites} and {num_periods}"
        )


def _ids(gen: str, concepts: Sequence[int], count: int | None = None) -> list[int]:
    ids = list(concepts)
    if not all(isinstance(c, Integral) and c >= 0 for c in ids):
        raise ValueError(f"{gen}: concepts are ids 0, 1, ...; got {ids}")
    if count is not None and len(ids) != count:
        raise ValueError(f"{gen}: needs exactly {count} concepts (from, to); got {ids}")
    return [int(c) for c in ids]


def _sites(gen: str, sites: float | Sequence[int], num_sites: int) -> list[int]:
    """The affected sites: the first ``round(fraction * num_sites)`` or an explicit list."""
    if isinstance(sites, Sequence) and not isinstance(sites, str):
        picked: list[object] = list(sites)
        if not all(isinstance(s, Integral) and 0 <= int(s) < num_sites for s in picked):
            raise ValueError(
                f"{gen}: sites={picked} must be indices in [0, {num_sites}) (num_sites={num_sites})"
            )
        if len(set(picked)) != len(picked):
            raise ValueError(f"{gen}: sites={picked} lists a site twice")
        return [int(s) for s in picked]  # type: ignore[call-overload]
    if isinstance(sites, bool) or not isinstance(sites, Real) or not 0 <= float(sites) <= 1:
        raise ValueError(
            f"{gen}: sites={sites!r} must be a fraction of sites in [0, 1] or a list of site "
            "indices such as [0, 3]"
        )
    if float(sites) == 0:
        return []
    return list(range(max(round(float(sites) * num_sites), 1)))


def _switch_periods(gen: str, at: int | Sequence[int], num_periods: int) -> list[int]:
    points: list[object] = list(at) if isinstance(at, Sequence) else [at]
    if not points or not all(isinstance(t, Integral) for t in points):
        raise ValueError(f"{gen}: at must be a period or a list of periods, got {at!r}")
    periods = [int(t) for t in points]  # type: ignore[call-overload]
    if any(not 1 <= t < num_periods for t in periods):
        raise ValueError(
            f"{gen}: at={periods} must lie in [1, {num_periods - 1}] "
            f"(num_periods={num_periods}; a switch at period 0 is no switch)"
        )
    if any(b <= a for a, b in zip(periods, periods[1:], strict=False)):
        raise ValueError(f"{gen}: at={periods} must be strictly increasing")
    return periods


def _steps(concepts: Sequence[int], at: Sequence[int], num_periods: int) -> np.ndarray:
    """One site's row: ``concepts[0]`` until ``at[0]``, then ``concepts[1]`` until ``at[1]``..."""
    row = np.full(num_periods, concepts[0], dtype=np.int64)
    for t, concept in zip(at, concepts[1:], strict=True):
        row[t:] = concept
    return row


def from_matrix(
    *, num_sites: int, num_periods: int, seed: int = 0, matrix: Sequence[Sequence[int]]
) -> Schedule:
    """A schedule written out in full: one row per site, one column per period.

    >>> from_matrix(num_sites=2, num_periods=3, seed=0, matrix=[[0, 1, 1], [0, 0, 2]]).concepts
    array([[0, 1, 1],
           [0, 0, 2]])
    """
    del seed  # nothing random
    _check_size("from_matrix", num_sites, num_periods)
    rows = [list(r) for r in matrix]
    if len(rows) != num_sites or any(len(r) != num_periods for r in rows):
        widths = sorted({len(r) for r in rows})
        raise ValueError(
            f"from_matrix: the matrix has {len(rows)} rows (sites) of {widths} columns (periods) "
            f"but the run has num_sites={num_sites} (runtime.num_clients) and "
            f"num_periods={num_periods} (scenario.num_periods): write one row per site and "
            "one column per period"
        )
    return Schedule(np.array(rows, dtype=np.int64))


def stationary(*, num_sites: int, num_periods: int, seed: int = 0, concept: int = 0) -> Schedule:
    """No drift: every site follows ``concept`` throughout.

    >>> stationary(num_sites=2, num_periods=3).change_points()
    []
    """
    del seed
    _check_size("stationary", num_sites, num_periods)
    (concept,) = _ids("stationary", [concept])
    return Schedule(np.full((num_sites, num_periods), concept, dtype=np.int64))


def abrupt(
    *,
    num_sites: int,
    num_periods: int,
    seed: int = 0,
    at: int | Sequence[int],
    concepts: Sequence[int] = (0, 1),
    sites: float | Sequence[int] = 1.0,
) -> Schedule:
    """Sudden drift: the chosen sites move through ``concepts``, switching at each of ``at``.

    Parameters
    ----------
    at : int or list of int
        The period of each switch, strictly increasing, in ``[1, num_periods)``.
    concepts : list of int
        ``len(at) + 1`` concept ids: the first before ``at[0]``, the next from ``at[0]`` on...
    sites : float or list of int
        A fraction (the first ``round(fraction * num_sites)`` sites, at least one when the
        fraction is positive) or explicit site indices. The other sites stay on ``concepts[0]``.

    >>> abrupt(num_sites=1, num_periods=8, at=[2, 4, 6], concepts=[0, 1, 2, 3]).concepts
    array([[0, 0, 1, 1, 2, 2, 3, 3]])
    """
    del seed
    _check_size("abrupt", num_sites, num_periods)
    points = _switch_periods("abrupt", at, num_periods)
    ids = _ids("abrupt", concepts)
    if len(ids) != len(points) + 1:
        raise ValueError(
            f"abrupt: {len(points)} switches (at={points}) need {len(points) + 1} concepts, "
            f"got concepts={ids}"
        )
    matrix = np.full((num_sites, num_periods), ids[0], dtype=np.int64)
    for s in _sites("abrupt", sites, num_sites):
        matrix[s] = _steps(ids, points, num_periods)
    return Schedule(matrix)


def recurring(
    *,
    num_sites: int,
    num_periods: int,
    seed: int = 0,
    at: Sequence[int],
    concepts: Sequence[int] = (0, 1, 0),
    sites: float | Sequence[int] = 1.0,
) -> Schedule:
    """Recurring concepts: an abrupt schedule in which some concept comes back.

    A model stored while an earlier period of the concept was served fits again when it returns,
    so a registry can roll back instead of retraining.

    >>> recurring(num_sites=1, num_periods=6, at=[2, 4]).concepts
    array([[0, 0, 1, 1, 0, 0]])
    """
    ids = _ids("recurring", concepts)
    if len(set(ids)) == len(ids):
        raise ValueError(
            f"recurring: no concept recurs in concepts={ids}; repeat one (e.g. [0, 1, 0]) "
            "or use abrupt"
        )
    return abrupt(
        num_sites=num_sites, num_periods=num_periods, seed=seed, at=at, concepts=ids, sites=sites
    )


def staggered(
    *,
    num_sites: int,
    num_periods: int,
    seed: int = 0,
    first: int,
    spacing: int,
    concepts: Sequence[int] = (0, 1),
    sites: float | Sequence[int] = 1.0,
) -> Schedule:
    """Asynchronous drift: the ``i``-th chosen site switches at ``first + i * spacing``.

    Sites whose turn falls after the last period never switch.

    >>> staggered(num_sites=3, num_periods=5, first=1, spacing=2).concepts
    array([[0, 1, 1, 1, 1],
           [0, 0, 0, 1, 1],
           [0, 0, 0, 0, 0]])
    """
    del seed
    _check_size("staggered", num_sites, num_periods)
    (first,) = _switch_periods("staggered", first, num_periods)
    if not isinstance(spacing, Integral) or spacing < 0:
        raise ValueError(f"staggered: spacing is a whole number of periods >= 0, got {spacing}")
    ids = _ids("staggered", concepts, count=2)
    matrix = np.full((num_sites, num_periods), ids[0], dtype=np.int64)
    for i, s in enumerate(_sites("staggered", sites, num_sites)):
        matrix[s, first + i * int(spacing) :] = ids[1]
    return Schedule(matrix)


def random_change_points(
    *,
    num_sites: int,
    num_periods: int,
    seed: int = 0,
    rate: float,
    num_concepts: int,
    sites: float | Sequence[int] = 1.0,
) -> Schedule:
    """Random drift: each chosen site starts on concept 0 and, every period, moves to another
    concept (uniformly among the rest) with probability ``rate``.

    Each site's path comes from its own generator seeded by ``(seed, site)``, so it depends
    neither on ``num_sites`` nor on which other sites drift.

    >>> s = random_change_points(num_sites=3, num_periods=20, seed=1, rate=0.2, num_concepts=3)
    >>> bool((s.concepts == random_change_points(
    ...     num_sites=3, num_periods=20, seed=1, rate=0.2, num_concepts=3).concepts).all())
    True
    """
    _check_size("random_change_points", num_sites, num_periods)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"random_change_points: rate is a probability in [0, 1], got {rate}")
    if not isinstance(num_concepts, Integral) or num_concepts < 2:
        raise ValueError(
            f"random_change_points: num_concepts must be an integer >= 2, got {num_concepts}"
        )
    matrix = np.zeros((num_sites, num_periods), dtype=np.int64)
    for s in _sites("random_change_points", sites, num_sites):
        rng = np.random.default_rng([seed, _SCHEDULE_RNG_TAG, s])
        change = rng.random(num_periods) < rate
        step = rng.integers(1, num_concepts, size=num_periods)  # never back to the same one
        change[0] = False
        matrix[s] = np.cumsum(np.where(change, step, 0)) % num_concepts
    return Schedule(matrix)


def gradual(
    *,
    num_sites: int,
    num_periods: int,
    seed: int = 0,
    center: float,
    width: float,
    concepts: Sequence[int] = (0, 1),
    sites: float | Sequence[int] = 1.0,
    snap: float = 0.01,
) -> Schedule:
    """Gradual drift: the chosen sites blend in ``concepts[1]`` with share
    ``sigmoid((t - center) / width)``.

    Shares within ``snap`` of 0 or 1 are set to 0 or 1, so the sigmoid's far tails read as the
    pure concepts (and not as a change point every period). Once the share reaches 1 the site's
    ``concepts`` entry is the new concept, so ``concepts`` alone tells each pure period's concept.

    >>> s = gradual(num_sites=1, num_periods=7, seed=0, center=3, width=0.5)
    >>> s.concepts, s.mix_to
    (array([[0, 0, 0, 0, 0, 0, 1]]), array([[0, 1, 1, 1, 1, 1, 1]]))
    >>> s.mix.round(3)
    array([[0.   , 0.018, 0.119, 0.5  , 0.881, 0.982, 0.   ]])
    >>> s.change_points()
    [1, 2, 3, 4, 5, 6]
    """
    del seed
    _check_size("gradual", num_sites, num_periods)
    if not width > 0:
        raise ValueError(f"gradual: width is the sigmoid's scale in periods, > 0; got {width}")
    if not 0.0 <= snap < 0.5:
        raise ValueError(f"gradual: snap must lie in [0, 0.5), got {snap}")
    old, new = _ids("gradual", concepts, count=2)
    share = 1.0 / (1.0 + np.exp(-(np.arange(num_periods) - center) / width))
    share = np.where(share < snap, 0.0, np.where(share > 1.0 - snap, 1.0, share))
    blending = (share > 0) & (share < 1)
    matrix = np.full((num_sites, num_periods), old, dtype=np.int64)
    mix_to = matrix.copy()
    mix = np.zeros((num_sites, num_periods))
    for s in _sites("gradual", sites, num_sites):  # pure periods carry their concept in matrix
        matrix[s] = np.where(share == 1, new, old)
        mix_to[s] = np.where(blending, new, matrix[s])
        mix[s] = np.where(blending, share, 0.0)
    return Schedule(matrix, mix_to=mix_to, mix=mix)

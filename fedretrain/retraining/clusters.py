"""Which model serves which site: concept clusters from summable per-model scores.

With ``adaptation=clustered`` the server keeps a set of concept models. Every period each site
scores every live model on its new window (before anything trains on it) and reports, per
model, its correct count and examples. From those numbers alone :func:`plan_period` decides,
site by site and with a logged reason:

- **drift**: a site's accuracy under its own model fell below its reference (its scores under
  that model over the last ``reference_periods`` windows, or the model's holdout score when it
  was trained) by more than ``min_drop`` and by more than ``z`` standard errors of the
  difference of two proportions;
- **recurrence**: a drifted site moves to a stored model that fits it (scores within
  ``min_drop`` of that model's own accuracy on its concept and beats the site's model by more
  than ``min_drop``): served again with no training;
- **new concept**: the drifted sites no model fits form one new cluster, whose model the
  controller trains on their data only (sites that turn out to differ drift again from it in a
  later period and split off the same way);
- **better elsewhere**: a site that did not drift moves when another model beats its own by
  ``z`` standard errors and ``min_drop``;
- **merge**: two serving clusters merge when their models are interchangeable on each other's
  sites: FedDrift's distance ``D(i, j) = max(acc_i(i) - acc_i(j), acc_j(j) - acc_j(i), 0)``
  (``acc_i(j)``: model ``j``'s pooled accuracy on cluster ``i``'s sites this period) at most
  ``merge_margin``, closest pair first, with complete linkage over the clusters merged so far.
  The merged cluster keeps the model that scores better on the union.

Each site's ``joined`` period (a new cluster, a recurrence or a move; a merge keeps it, the
sites' concept did not change) starts the windows it trains on: a cluster's model learns from
its concept's data so far, the last ``buffer_periods`` windows of it
(:meth:`ClusterState.buffer_start`).

The state is a frozen :class:`ClusterState`; its ``to_dict()`` goes into the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fedretrain.config import AdaptationConfig

Score = tuple[int, int]  # (correct, examples)
ModelScores = Mapping[int, Mapping[int, Score]]  # site -> cluster -> score on its window


@dataclass(frozen=True)
class Cluster:
    """A concept model: the registry version that serves it, what it scored on its own sites'
    holdouts when it was trained (``quality``), the sites it was trained on, the last period
    it served a site and the last period it was trained in (``None``: the one it was born)."""

    version: int
    quality: float
    born: int
    last_served: int
    trained_on: tuple[int, ...] = ()
    trained_at: int | None = None

    @property
    def last_trained(self) -> int:
        return self.born if self.trained_at is None else self.trained_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "quality": self.quality,
            "born": self.born,
            "last_served": self.last_served,
            "trained_on": list(self.trained_on),
            "trained_at": self.trained_at,
        }


@dataclass(frozen=True)
class ClusterState:
    """The live concept models, which site each serves and since when, and each site's
    reference scores."""

    clusters: Mapping[int, Cluster] = field(default_factory=dict)
    assignment: Mapping[int, int] = field(default_factory=dict)  # site -> cluster
    reference: Mapping[int, tuple[Score, ...]] = field(default_factory=dict)  # site -> windows
    next_id: int = 0
    joined: Mapping[int, int] = field(default_factory=dict)  # site -> period it joined

    def buffer_start(self, site: int, period: int, buffer_periods: int) -> int:
        """The first period whose window ``site`` trains on in ``period``: the period it
        joined its cluster, or the oldest of its last ``buffer_periods`` windows.

        >>> ClusterState(joined={3: 2}).buffer_start(3, 9, 4), ClusterState().buffer_start(3, 9, 4)
        (6, 9)
        >>> ClusterState(joined={3: 8}).buffer_start(3, 9, 4)
        8
        """
        return max(self.joined.get(site, period), period - buffer_periods + 1)

    def growing(self, cluster: int, period: int, buffer_periods: int) -> tuple[int, ...]:
        """``cluster``'s sites whose buffers are still filling: joined fewer than
        ``buffer_periods`` periods ago, so they hold a window more than when the model last
        trained (before ``period``). The sites a refresh is for."""
        trained = self.clusters[cluster].last_trained
        return tuple(
            s
            for s in self.sites_of(cluster)
            if period > trained and period - self.joined.get(s, period) + 1 <= buffer_periods
        )

    def sites_of(self, cluster: int) -> tuple[int, ...]:
        return tuple(sorted(s for s, c in self.assignment.items() if c == cluster))

    def untrained(self, cluster: int) -> tuple[int, ...]:
        """``cluster``'s sites its model was not trained on."""
        trained = set(self.clusters[cluster].trained_on)
        return tuple(s for s in self.sites_of(cluster) if s not in trained)

    @property
    def serving(self) -> list[int]:
        """The clusters that serve at least one site."""
        return sorted(set(self.assignment.values()))

    def live(self, max_models: int) -> list[int]:
        """The clusters whose models travel to the sites: every serving one, then the most
        recently served others, ``max_models`` in all."""
        serving = self.serving
        others = sorted(
            (c for c in self.clusters if c not in serving),
            key=lambda c: -self.clusters[c].last_served,
        )
        return sorted(serving + others[: max(max_models - len(serving), 0)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "clusters": {str(k): c.to_dict() for k, c in sorted(self.clusters.items())},
            "assignment": {str(s): c for s, c in sorted(self.assignment.items())},
            "reference": {str(s): [list(w) for w in r] for s, r in sorted(self.reference.items())},
            "next_id": self.next_id,
            "joined": {str(s): p for s, p in sorted(self.joined.items())},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClusterState:
        return cls(
            clusters={
                int(k): Cluster(**{**v, "trained_on": tuple(v.get("trained_on", ()))})
                for k, v in raw["clusters"].items()
            },
            assignment={int(s): int(c) for s, c in raw["assignment"].items()},
            reference={
                int(s): tuple((int(c), int(n)) for c, n in r) for s, r in raw["reference"].items()
            },
            next_id=int(raw["next_id"]),
            joined={int(s): int(p) for s, p in raw.get("joined", {}).items()},
        )

    def founded(
        self, period: int, version: int, sites: Mapping[int, Score], quality: float
    ) -> tuple[ClusterState, int]:
        """A new cluster served by ``version`` for ``sites``, whose references become their
        holdout scores under it (so drift in the very next period is tested)."""
        cluster = self.next_id
        trained_on = tuple(sorted(sites))
        clusters = {**self.clusters, cluster: Cluster(version, quality, period, period, trained_on)}
        assignment = {**self.assignment, **dict.fromkeys(sites, cluster)}
        reference = {**self.reference, **{s: (score,) for s, score in sites.items()}}
        state = replace(
            self,
            clusters=clusters,
            assignment=assignment,
            reference=reference,
            next_id=cluster + 1,
            joined={**self.joined, **dict.fromkeys(sites, period)},
        )
        return state, cluster

    def refined(
        self, cluster: int, period: int, version: int, sites: Mapping[int, Score], quality: float
    ) -> ClusterState:
        """``cluster`` is served by a fine-tuned ``version`` from now on; its sites' references
        restart from their holdout scores under it."""
        old = self.clusters[cluster]
        trained_on = tuple(sorted(set(old.trained_on) | set(sites)))
        refined = replace(
            old, version=version, quality=quality, trained_on=trained_on, trained_at=period
        )
        clusters = {**self.clusters, cluster: refined}
        reference = {**self.reference, **{s: (score,) for s, score in sites.items()}}
        return replace(self, clusters=clusters, reference=reference)

    def rolled_back(
        self, cluster: int, period: int, version: int, sites: Mapping[int, Score], quality: float
    ) -> ClusterState:
        """``cluster`` is served by ``version`` (its model's parent) again: a fine-tune that
        did worse on its sites' new data is undone. The sites it trained on stay known, and
        ``period`` counts as trained (no refresh retrains it at once); references restart from
        the sites' holdout scores under ``version``."""
        old = self.clusters[cluster]
        clusters = {
            **self.clusters,
            cluster: replace(old, version=version, quality=quality, trained_at=period),
        }
        reference = {**self.reference, **{s: (score,) for s, score in sites.items()}}
        return replace(self, clusters=clusters, reference=reference)


@dataclass(frozen=True)
class Move:
    """A site served by another existing cluster's model from the next period."""

    site: int
    source: int
    target: int
    reason: str
    kind: str  # "recurrence", "better elsewhere" or "merge"


@dataclass(frozen=True)
class Merge:
    kept: int
    absorbed: int
    distance: float
    reason: str


@dataclass(frozen=True)
class PeriodPlan:
    """What :func:`plan_period` decided: the state after its moves and merges, the sites a new
    cluster should be trained for, the clusters sites joined, and every decision in words."""

    state: ClusterState
    drifted: frozenset[int]
    new_concept: tuple[int, ...]  # drifted sites no model fits: a new cluster's sites
    joined: tuple[int, ...]  # clusters that gained sites by a move or a merge
    moves: tuple[Move, ...]
    merges: tuple[Merge, ...]
    tests: Mapping[int, dict[str, Any]]  # site -> its drift test, as logged

    @property
    def changed(self) -> bool:
        return bool(self.moves or self.merges or self.new_concept)

    def decisions(self, period: int) -> list[dict[str, Any]]:
        """One logged record per move, merge and new concept (``decisions.jsonl``)."""
        records: list[dict[str, Any]] = [
            {
                "period": period,
                "cluster": "merge",
                "kept": m.kept,
                "absorbed": m.absorbed,
                "distance": m.distance,
                "reason": m.reason,
            }
            for m in self.merges
        ]
        records += [
            {
                "period": period,
                "cluster": m.kind,
                "site": m.site,
                "from": m.source,
                "to": m.target,
                "reason": m.reason,
            }
            for m in self.moves
            if m.kind != "merge"
        ]
        if self.new_concept:
            records.append(
                {
                    "period": period,
                    "cluster": "new concept",
                    "sites": list(self.new_concept),
                    "reason": "drifted, and no stored model fits: "
                    + "; ".join(self.tests[s]["reason"] for s in self.new_concept),
                }
            )
        return records


def accuracy(score: Score) -> float:
    correct, n = score
    return correct / n if n else math.nan


def pooled(scores: ModelScores, sites: tuple[int, ...], cluster: int) -> Score:
    """Cluster ``cluster``'s model's summed score on ``sites``."""
    picked = [scores[s][cluster] for s in sites if s in scores and cluster in scores[s]]
    return sum(c for c, _ in picked), sum(n for _, n in picked)


def worse_by(
    reference: Score,
    current: Score,
    z: float,
    min_drop: float,
    noise_sd: tuple[float, float] = (0.0, 0.0),
) -> tuple[bool, str]:
    """Whether ``current`` is below ``reference`` by more than ``min_drop`` and ``z``
    standard errors (two proportions, pooled variance); and the test in words.

    ``noise_sd`` is the standard deviation of the noise on each side's correct count, where
    the sites send private scores (:func:`~fedretrain.monitor.private_scores.score_count_sd`,
    √m of it for a reference summed over m windows): its variance joins the sampling
    variance, so noise alone raises no more alarms than sampling alone does.

    >>> worse_by((90, 100), (40, 100), 3.7, 0.05)[0]
    True
    >>> worse_by((90, 100), (85, 100), 3.7, 0.05)[0]
    False
    >>> worse_by((90, 100), (65, 100), 3.7, 0.05)[0], worse_by((90, 100), (65, 100), 3.7,
    ...     0.05, noise_sd=(7.1, 7.1))[0]
    (True, False)
    """
    (c1, n1), (c2, n2) = reference, current
    if not n1 or not n2:
        return False, "no examples to compare"
    p1, p2 = c1 / n1, c2 / n2
    pooled_p = (c1 + c2) / (n1 + n2)
    sampling = max(pooled_p * (1 - pooled_p), 1e-12) * (1 / n1 + 1 / n2)
    noise = (noise_sd[0] / n1) ** 2 + (noise_sd[1] / n2) ** 2
    threshold = max(min_drop, z * math.sqrt(sampling + noise))
    words = f"{p2:.3f} vs reference {p1:.3f} (a drop over {threshold:.3f} is drift)"
    return p1 - p2 > threshold, words


def distance(scores: ModelScores, state: ClusterState, i: int, j: int) -> float | None:
    """FedDrift's cluster distance between ``i`` and ``j`` on this period's windows; None when
    either model was not scored on the other's sites."""
    si, sj = state.sites_of(i), state.sites_of(j)
    ii, ij = pooled(scores, si, i), pooled(scores, si, j)
    jj, ji = pooled(scores, sj, j), pooled(scores, sj, i)
    if not (ii[1] and ij[1] and jj[1] and ji[1]):
        return None
    return max(accuracy(ii) - accuracy(ij), accuracy(jj) - accuracy(ji), 0.0)


def plan_period(
    state: ClusterState,
    period: int,
    scores: ModelScores,
    config: AdaptationConfig,
    count_sd: float = 0.0,
) -> PeriodPlan:
    """Merges, drift tests, recurrences and moves for one period; see the module docstring.

    ``scores`` holds every reporting site's score under every live model; a site missing from
    it (no data, rejected) keeps its cluster and reference. ``count_sd``: the noise standard
    deviation of one window's correct count (0 for exact scores), which widens the drift
    tests.
    """
    a = config
    state, merges, merge_moves = _merge(state, scores, a.merge_margin, period)
    assignment = dict(state.assignment)
    reference = dict(state.reference)
    clusters = dict(state.clusters)
    joined = dict(state.joined)  # a merge keeps it: the sites' concept did not change
    moves: list[Move] = list(merge_moves)
    drifted, new_concept, tests = set(), [], {}
    moved_by_merge = {m.site for m in merge_moves}
    for site in sorted(scores):
        own = assignment.get(site)
        if own is None or own not in scores[site]:
            continue
        current = scores[site][own]
        clusters[own] = replace(clusters[own], last_served=period)
        if site in moved_by_merge:
            reference[site] = (current,)
            continue
        windows = reference.get(site, ())
        ref = _summed(windows)
        noise = (count_sd * math.sqrt(len(windows)), count_sd)
        bad, words = worse_by(ref, current, a.z, a.min_drop, noise)
        tests[site] = {"cluster": own, "drifted": bad, "reason": f"site {site}: {words}"}
        others = {c: s for c, s in scores[site].items() if c != own and c in clusters}
        if bad:
            drifted.add(site)
            fits = {
                c: s
                for c, s in others.items()
                if accuracy(s) >= clusters[c].quality - a.min_drop
                and accuracy(s) > accuracy(current) + a.min_drop
            }
            if fits:
                best = max(fits, key=lambda c: (accuracy(fits[c]), -c))
                reason = (
                    f"site {site} drifted under cluster {own} ({words}); cluster {best}'s "
                    f"v{clusters[best].version} scores {accuracy(fits[best]):.3f} on it, within "
                    f"{a.min_drop} of its own {clusters[best].quality:.3f}: a recurring concept"
                )
                moves.append(Move(site, own, best, reason, "recurrence"))
                assignment[site], reference[site] = best, (fits[best],)
                joined[site] = period
            else:
                new_concept.append(site)
            continue
        better = {
            c: s
            for c, s in others.items()
            if worse_by(s, current, a.z, a.min_drop, (count_sd, count_sd))[0]
        }
        if better:
            best = max(better, key=lambda c: (accuracy(better[c]), -c))
            reason = (
                f"site {site}: cluster {best}'s v{clusters[best].version} scores "
                f"{accuracy(better[best]):.3f} against its own cluster {own}'s "
                f"{accuracy(current):.3f}"
            )
            moves.append(Move(site, own, best, reason, "better elsewhere"))
            assignment[site], reference[site] = best, (better[best],)
            joined[site] = period
            continue
        reference[site] = (reference.get(site, ()) + (current,))[-a.reference_periods :]
    state = replace(
        state, clusters=clusters, assignment=assignment, reference=reference, joined=joined
    )
    return PeriodPlan(
        state,
        frozenset(drifted),
        tuple(new_concept),
        tuple(sorted({m.target for m in moves})),
        tuple(moves),
        tuple(merges),
        tests,
    )


def _summed(windows: tuple[Score, ...]) -> Score:
    return sum(c for c, _ in windows), sum(n for _, n in windows)


def _merge(
    state: ClusterState, scores: ModelScores, margin: float, period: int
) -> tuple[ClusterState, list[Merge], list[Move]]:
    """Merge interchangeable serving clusters, closest first, complete linkage."""
    members = {c: {c} for c in state.serving}
    # Distances between the original clusters; a merged group's is the largest (complete).
    base: dict[tuple[int, int], float] = {}
    for i in members:
        for j in members:
            if i < j:
                d = distance(scores, state, i, j)
                if d is not None:
                    base[(i, j)] = d

    def linkage(g: set[int], h: set[int]) -> float | None:
        ds = [base.get((min(x, y), max(x, y))) for x in g for y in h]
        return None if any(d is None for d in ds) else max(d for d in ds if d is not None)

    merges: list[Merge] = []
    moves: list[Move] = []
    assignment = dict(state.assignment)
    while True:
        pairs = [
            (d, g, h)
            for g in members
            for h in members
            if g < h and (d := linkage(members[g], members[h])) is not None and d <= margin
        ]
        if not pairs:
            break
        d, g, h = min(pairs)
        union = tuple(sorted(s for s, c in assignment.items() if c in members[g] | members[h]))
        kept = max((g, h), key=lambda c: (accuracy(pooled(scores, union, c)), -c))
        absorbed = h if kept == g else g
        reason = (
            f"clusters {kept} and {absorbed} are interchangeable on each other's sites "
            f"(distance {d:.3f} <= merge_margin {margin}): cluster {kept}'s "
            f"v{state.clusters[kept].version} scores "
            f"{accuracy(pooled(scores, union, kept)):.3f} on both"
        )
        merges.append(Merge(kept, absorbed, d, reason))
        for site, c in list(assignment.items()):
            if c in members[absorbed]:
                assignment[site] = kept
                moves.append(Move(site, c, kept, reason, "merge"))
        members[kept] |= members.pop(absorbed)
    del period  # merges are decided on the period's scores alone
    return replace(state, assignment=assignment), merges, moves

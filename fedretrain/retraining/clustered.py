"""``adaptation=clustered``: one model per concept, each site served its cluster's model.

:class:`ClusteredController` runs the periods of :class:`~fedretrain.retraining.controller.
Controller` with a set of concept models instead of one. Period 0 trains the first model on
every site (cluster 0). From then on each period's statistics query carries every live model
(:class:`~fedretrain.retraining.port.Serving`); each site serves its cluster's model and
scores all of them, and :func:`~fedretrain.retraining.clusters.plan_period` decides the moves,
merges and new concepts. A new concept's model is trained by its sites only, warm from the
model that does best on them (re-initialised when that stalls, as a single model's retrain
is), and kept only if the gate prefers it to what those sites serve; a cluster that sites
joined is fine-tuned on all its sites the same way. A cluster's sites train on their windows
since they joined it (at most ``adaptation.buffer_periods``), and while those buffers still
grow the cluster is fine-tuned on them every period (``adaptation.refresh``), so a concept's
model learns from all its data so far. Every decision is a line of ``decisions.jsonl``;
``clusters.csv`` records each site's cluster and model every period.

With ``release.canary_fraction > 0`` a fine-tune that passes its gate is first served by that
share of its cluster's sites for ``release.canary_periods`` periods, the others serving its
parent, and takes the cluster over or is rolled back on their prequential scores (difference
in differences, :func:`~fedretrain.registry.canary_verdict`); a new concept's model has no
parent of its concept to compare with and is not canaried.

Each cluster is a lineage in the registry: its versions carry its number (``cluster``) and
its champion is the alias ``cluster-N``, moved when the cluster is founded, refined or rolled
back. The registry's ``champion`` is the model serving the most sites, and each period's
assignment is a ``clusters`` event.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedretrain.atomic import atomic_replace
from fedretrain.checkpoint import Plateau, RunState
from fedretrain.errors import FederationError
from fedretrain.monitor.private import noise_std_for
from fedretrain.monitor.private_scores import score_count_sd
from fedretrain.monitor.stats import HistogramEdges
from fedretrain.registry import Status, canary_verdict, choose_canary_sites, gate
from fedretrain.retraining.clusters import ClusterState, Move, PeriodPlan, Score, plan_period
from fedretrain.retraining.controller import Controller, _no_data, outcome_from, outcome_record
from fedretrain.retraining.lifecycle import as_site_scores
from fedretrain.retraining.outcome import REJECTED, Outcome
from fedretrain.retraining.port import CollectedStats, Serving, SiteScores, Weights
from fedretrain.retraining.release_state import Watch
from fedretrain.retraining.summary import period_row

log = logging.getLogger(__name__)

CLUSTERS_CSV = "clusters.csv"
ASSIGNMENT = ("period", "site", "cluster", "version")  # clusters.csv's columns
CLUSTERS_PNG = "clusters.png"
DRIFT_TEST = "cluster_drift"  # the alarms column of a period in which sites drifted
# A cluster's canary candidate travels as one more live model, numbered past every cluster.
CANARY_MODEL = 1_000_000


@dataclass(frozen=True)
class ClusterCanary:
    """A cluster's fine-tune served by ``sites`` (some of the cluster's ``members``) from
    period ``start``; ``parent`` serves the others. ``before``: the parent's score on every
    member's window in the period the gate passed (whatever the member served then);
    ``during``: each member's score under the model it served, summed over the canary's
    periods; ``holdout``: the candidate's holdout scores at the gate (the cluster's
    references if it takes over)."""

    version: int
    parent: int
    sites: tuple[int, ...]
    members: tuple[int, ...]
    start: int
    before: dict[int, tuple[int, int]]
    holdout: dict[int, tuple[int, int]]
    during: dict[int, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("before", "holdout", "during"):
            out[name] = [[s, c, n] for s, (c, n) in sorted(getattr(self, name).items())]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClusterCanary:
        scores = {
            name: {int(s): (int(c), int(n)) for s, c, n in raw[name]}
            for name in ("before", "holdout", "during")
        }
        return cls(
            int(raw["version"]),
            int(raw["parent"]),
            tuple(raw["sites"]),
            tuple(raw["members"]),
            int(raw["start"]),
            **scores,
        )


class ClusteredController(Controller):
    """A :class:`Controller` whose sites are served one model per concept cluster."""

    _first_cluster = 0

    def __init__(self, *args: Any, truth: np.ndarray | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # adaptation=oracle: the true concept of each site and period (sites x periods).
        self.truth = truth if self.cfg.adaptation.oracle else None
        if self.cfg.adaptation.oracle and truth is None:
            raise FederationError(
                "adaptation=oracle assigns sites by their true concepts, which only a "
                "simulated scenario knows: use adaptation=clustered in a deployment"
            )
        self._concept_cluster: dict[int, int] = {}  # oracle: true concept -> its cluster
        self.truth_for_plot = truth  # clusters.png draws the true concepts where known
        self.clusters = ClusterState()
        self._assignments: list[tuple[int, int, int, int]] = []  # period, site, cluster, version
        self._model_scores: Mapping[int, Mapping[int, Score]] = {}  # the period's, by site
        self._watches: dict[int, Watch] = {}  # cluster -> its fresh fine-tune on probation
        self._canaries: dict[int, ClusterCanary] = {}  # cluster -> its fine-tune under canary

    # ------------------------------------------------------------------ periods

    def _first_served(self, version: int) -> None:
        """Period 0's model is cluster 0, served by every site."""
        scores = self._evaluate(0, self.registry.load(version)).scores
        quality = _pooled_accuracy(scores, scores)
        self.clusters, cluster = ClusterState().founded(0, version, scores, quality)
        self._crown(cluster, version, 0, "the initial model serves every site")
        if self.truth is not None:  # cluster 0 is the concept most sites start on
            first = np.bincount(self.truth[:, 0].astype(np.int64)).argmax()
            self._concept_cluster[int(first)] = cluster
        self._record_assignment(0)

    def _period(self, period: int, replayed: CollectedStats | None) -> None:
        start = time.perf_counter()
        edges = HistogramEdges(np.asarray(self.state.edges, dtype=np.float64))
        collected = replayed or self._collect(period, self._champion(), edges)
        # The clusters' own models' scores; a canary candidate's row is the canary's.
        model_scores = {
            site: {c: v for c, v in rows.items() if c < CANARY_MODEL}
            for site, rows in collected.model_scores.items()
        }
        self._model_scores = model_scores
        if _no_data(collected.stats):
            self._idle_period(collected, start)
            return
        if self.truth is None:
            plan = plan_period(
                self.clusters,
                period,
                model_scores,
                self.cfg.adaptation,
                self._count_sd(collected),
            )
            groups = [plan.new_concept] if plan.new_concept else []
        else:
            plan, groups = self._oracle_plan(period, collected)
        self.clusters = plan.state
        for record in plan.decisions(period):
            self.timeline.decision(record)
            log.info("period %d: %s", period, record["reason"])
        self._drifted = plan.drifted
        self._watch(period)
        self._score_canaries(period, collected)
        outcomes = [self._new_concept(period, sites) for sites in groups]
        refined, refreshed = set(self._canaries), []  # a cluster under canary waits for it
        if self.cfg.adaptation.refine_on_join:
            for cluster in plan.joined:  # joined by sites its model never trained on
                if cluster not in refined and self.clusters.untrained(cluster):
                    outcomes.append(self._refine(period, cluster))
                    refined.add(cluster)
        if self.cfg.adaptation.refresh:
            buffer = self.cfg.adaptation.buffer_periods
            for cluster in self.clusters.serving:  # its sites gained a window since it trained
                growing = self.clusters.growing(cluster, period, buffer)
                if cluster not in refined and growing:
                    outcomes.append(self._refine(period, cluster, growing))
                    refreshed.append(cluster)
        self._serve_largest(period)
        reason = _reason(plan, groups, refreshed)
        self.timeline.decision({"period": period, "retrain": bool(outcomes), "reason": reason})
        outcome = _combined(outcomes)
        serving = self.lifecycle.champion_version()
        row = period_row(collected, None, bool(outcomes), reason, outcome, serving, start)
        alarms = ";".join(str(site) for site in sorted(plan.drifted))
        row = replace(
            row,
            change_point=period in self.change_points,
            alarms=DRIFT_TEST if plan.drifted else "",
            alarm_sites=alarms,
        )
        self._add_row(row)
        self._record_assignment(period)
        self._complete(period)

    def _count_sd(self, collected: CollectedStats) -> float:
        """The noise sd of one window's correct count in this period's scores: 0 unless the
        sites send private statistics (``privacy.stats_noise_multiplier``)."""
        sigma = noise_std_for(self.cfg.privacy)
        if not sigma or not collected.model_scores:
            return 0.0
        num_classes = np.asarray(collected.stats.total.confusion).shape[0]
        live = max(len(rows) for rows in collected.model_scores.values())
        return score_count_sd(sigma, num_classes, live)

    def _oracle_plan(
        self, period: int, collected: CollectedStats
    ) -> tuple[PeriodPlan, list[tuple[int, ...]]]:
        """adaptation=oracle: every reporting site goes to its true concept's cluster; the
        sites of a concept with no cluster yet are a new concept's group (one per concept)."""
        assert self.truth is not None
        state = self.clusters
        assignment = dict(state.assignment)
        joined = dict(state.joined)
        moves: list[Move] = []
        groups: dict[int, list[int]] = {}
        drifted: set[int] = set()
        for site in sorted(collected.stats.sites):
            concept = int(self.truth[site, period])
            target = self._concept_cluster.get(concept)
            own = assignment.get(site)
            if target is None:
                groups.setdefault(concept, []).append(site)
                drifted.add(site)
            elif own != target:
                reason = f"site {site} follows concept {concept} now: cluster {target}'s model"
                moves.append(Move(site, -1 if own is None else own, target, reason, "oracle"))
                assignment[site], joined[site] = target, period
                drifted.add(site)
        plan = PeriodPlan(
            replace(state, assignment=assignment, joined=joined),
            frozenset(drifted),
            (),
            tuple(sorted({m.target for m in moves})),
            tuple(moves),
            (),
            {},
        )
        return plan, [tuple(g) for _, g in sorted(groups.items())]

    def _serving(self) -> Serving | None:
        state = self.clusters
        if not state.clusters:
            return None  # period 0: the one initial model
        live = state.live(self.cfg.adaptation.max_models)
        models = {c: self.registry.load(state.clusters[c].version) for c in live}
        champion = self.lifecycle.champion_version()
        default = next((c for c in live if state.clusters[c].version == champion), live[0])
        assignment = dict(state.assignment)
        for cluster, c in sorted(self._canaries.items()):  # its sites serve the candidate
            models[CANARY_MODEL + cluster] = self.registry.load(c.version)
            for site in c.sites:
                if assignment.get(site) == cluster:
                    assignment[site] = CANARY_MODEL + cluster
        return Serving(models, assignment, default)

    def _scored_periods(self, periods: int) -> int:
        """Every period after the first sends per-model scores (period 0 serves one model)."""
        return max(periods - 1, 0)

    def _complete(self, period: int) -> None:
        self.state.clusters = {
            "state": self.clusters.to_dict(),
            "watches": {str(c): asdict(w) for c, w in sorted(self._watches.items())},
            "canaries": {str(k): c.to_dict() for k, c in sorted(self._canaries.items())},
            "concepts": {str(k): c for k, c in sorted(self._concept_cluster.items())},
        }
        self.state.trainings = {}
        super()._complete(period)

    # ------------------------------------------------------------------ resume

    def _keep(self, collected: CollectedStats) -> None:
        """The per-model scores before the statistics, which mark the period as kept."""
        self.checkpoints.save_model_scores(collected.stats.period, collected.model_scores)
        super()._keep(collected)

    def _restore(self) -> CollectedStats | None:
        kept = super()._restore()
        if kept is None:
            return None
        scores = self.checkpoints.load_model_scores(kept.stats.period)
        return replace(kept, model_scores=scores or {})

    def _replay(self, state: RunState) -> None:
        """The clusters come back from the checkpoint as the last completed period left them
        (a clustered run's drift tests are its clusters', which need no replay), and
        ``clusters.csv`` is cut back to that period."""
        raw = state.clusters or {}
        if raw:
            self.clusters = ClusterState.from_dict(raw["state"])
            self._watches = {int(c): Watch(**w) for c, w in raw["watches"].items()}
            self._canaries = {
                int(k): ClusterCanary.from_dict(c) for k, c in raw.get("canaries", {}).items()
            }
            self._concept_cluster = {int(k): int(c) for k, c in raw["concepts"].items()}
        path = self.run_dir / CLUSTERS_CSV
        if path.exists():
            with open(path, newline="") as f:
                rows = [
                    (int(r["period"]), int(r["site"]), int(r["cluster"]), int(r["version"]))
                    for r in csv.DictReader(f)
                ]
            self._assignments = [r for r in rows if r[0] <= state.completed_period]

    # ------------------------------------------------------------------ training

    def _new_concept(self, period: int, sites: tuple[int, ...]) -> Outcome:
        """A model for the drifted sites no stored model fits, trained by them alone."""
        state = self.clusters
        # Warm from the live model that does best on these sites' windows this period.
        start_cluster = max(
            state.live(self.cfg.adaptation.max_models),
            key=lambda c: (_accuracy_of(self._window_scores(c, sites)), -c),
        )
        start = state.clusters[start_cluster]
        key = f"p{period}-new-{sites[0]}"
        reason = f"new concept at sites {list(sites)}, warm from cluster {start_cluster}"
        trigger = f"cluster {state.next_id}: new concept"
        outcome, version = self._train_cluster(
            period, sites, state.next_id, start.version, start.quality, key, reason, trigger
        )
        # The gate: the new model against what each of these sites serves now.
        baseline = self._serving_scores(period, sites)
        candidate = self._holdout(period, version, sites)
        if not self._gate(period, version, candidate, baseline, key):
            return replace(outcome, action=f"new concept{REJECTED}")
        quality = _accuracy_of(candidate)
        self.clusters, cluster = self.clusters.founded(period, version, candidate, quality)
        self._crown(cluster, version, period, f"founded for sites {list(sites)}")
        if self.truth is not None:
            self._concept_cluster[int(self.truth[sites[0], period])] = cluster
        self.timeline.decision(
            {
                "period": period,
                "cluster": "founded",
                "id": cluster,
                "version": version,
                "sites": list(sites),
                "reason": f"cluster {cluster} (v{version}) serves sites {list(sites)}: "
                f"{quality:.3f} on their holdouts against {_accuracy_of(baseline):.3f}",
            }
        )
        return replace(outcome, action=f"new cluster {cluster}")

    def _refine(self, period: int, cluster: int, growing: tuple[int, ...] = ()) -> Outcome:
        """Fine-tune ``cluster``'s model on all its sites' buffers; kept if the gate prefers
        it. ``growing``: a refresh, for these sites' windows gained since it last trained."""
        sites = self.clusters.sites_of(cluster)
        current = self.clusters.clusters[cluster]
        key = f"p{period}-c{cluster}"
        if growing:
            reason = (
                f"cluster {cluster}'s sites {list(growing)} hold windows it has not trained "
                f"on: fine-tuned on its {len(sites)} sites' buffers"
            )
            trigger = f"cluster {cluster}: refresh"
        else:
            reason = f"sites joined cluster {cluster}: fine-tuned on its {len(sites)} sites"
            trigger = f"cluster {cluster}: refine"
        outcome, version = self._train_cluster(
            period, sites, cluster, current.version, None, key, reason, trigger
        )
        baseline = self._holdout(period, current.version, sites)
        candidate = self._holdout(period, version, sites)
        action = f"{'refresh' if growing else 'refine'} {cluster}"
        if not self._gate(period, version, candidate, baseline, key):
            return replace(outcome, action=f"{action}{REJECTED}")
        fraction = self.cfg.release.canary_fraction
        if fraction > 0 and len(sites) >= 2:  # a canary needs sites that serve the parent
            chosen = choose_canary_sites(sites, fraction, [self.cfg.runtime.seed, period, cluster])
            self._canaries[cluster] = ClusterCanary(
                version,
                current.version,
                tuple(int(s) for s in chosen),
                sites,
                period + 1,
                self._window_scores(cluster, sites),  # the parent's, on every member's window
                dict(candidate),
            )
            self.timeline.decision(
                {
                    "period": period,
                    "cluster": "canary",
                    "id": cluster,
                    "version": version,
                    "sites": list(chosen),
                    "reason": f"cluster {cluster}'s v{version} passed its gate: served by "
                    f"sites {list(chosen)} of {list(sites)} for "
                    f"{self.cfg.release.canary_periods} period(s) before it takes over",
                }
            )
            return replace(outcome, action=f"{action}, canary")
        self.clusters = self.clusters.refined(
            cluster, period, version, candidate, _accuracy_of(candidate)
        )
        self._crown(cluster, version, period, f"{action}: the gate passed it on its sites")
        if self.cfg.release.watch_periods > 0:
            until = period + self.cfg.release.watch_periods
            self._watches[cluster] = Watch(version, current.version, until)
        return replace(outcome, action=action)

    def _watch(self, period: int) -> None:
        """``release.watch_periods`` per cluster: a fine-tuned model (refine or refresh) is
        scored with its parent on its cluster's sites' holdouts in the periods after it
        began serving, and the cluster goes back to the parent if the parent does better by
        more than ``release.rollback_margin``. A new concept's model has no parent of its own
        concept and is not watched; a merge or a later fine-tune ends a watch. Sites that
        drifted this period leave the comparison: neither model is of their new concept (with
        none left the watch ends)."""
        margin = self.cfg.release.rollback_margin
        for cluster, w in sorted(self._watches.items()):
            current = self.clusters.clusters.get(cluster)
            sites = tuple(s for s in self.clusters.sites_of(cluster) if s not in self._drifted)
            if current is None or current.version != w.version or not sites or period > w.until:
                del self._watches[cluster]
                continue
            mine = self._holdout(period, w.version, sites)
            parents = self._holdout(period, w.parent, sites)
            mine_acc, parent_acc = _accuracy_of(mine), _accuracy_of(parents)
            self.registry.record(
                "watch",
                period=period,
                version=w.version,
                payload={"cluster": cluster, "champion": mine_acc, "parent": parent_acc},
                key=f"p{period}-c{cluster}-watch",
            )
            if not parent_acc > mine_acc + margin:
                if period >= w.until:
                    del self._watches[cluster]
                continue
            reason = (
                f"cluster {cluster}'s fine-tuned v{w.version} scores {mine_acc:.4f} on its "
                f"sites {list(sites)} in period {period}, its parent v{w.parent} "
                f"{parent_acc:.4f} (rollback_margin {margin}): cluster {cluster} serves "
                f"v{w.parent} again"
            )
            self._roll_back(period, cluster, w, reason)
            self.clusters = self.clusters.rolled_back(
                cluster, period, w.parent, parents, parent_acc
            )
            del self._watches[cluster]
            self.timeline.decision(
                {"period": period, "cluster": "rollback", "id": cluster, "reason": reason}
            )
            log.info("period %d: %s", period, reason)

    def _score_canaries(self, period: int, collected: CollectedStats) -> None:
        """Add ``period``'s scores (each member's, under the model it serves, from the
        per-model scores) to each cluster's canary and decide at its last period: the
        candidate takes the cluster over (and is watched) or is rolled back. A canary whose
        cluster's sites changed (a move, a merge, a drift) ends: its comparison no longer
        holds."""
        for cluster, c in sorted(self._canaries.items()):
            if period < c.start:
                continue
            members = self.clusters.sites_of(cluster)
            serving = self.clusters.clusters[cluster].version
            if serving != c.parent:  # the parent's own watch rolled it back
                reason = (
                    f"cluster {cluster}'s v{c.parent} was withdrawn during the canary of its "
                    f"fine-tune v{c.version}: the canary ends, v{serving} serves"
                )
                self._end_canary(period, cluster, c, reason, "cancel")
                continue
            if members != c.members or self._drifted & set(members):
                reason = (
                    f"cluster {cluster}'s sites changed during the canary of v{c.version} "
                    f"({list(c.members)} -> {list(members)}, drifted "
                    f"{sorted(self._drifted & set(members))}): it ends, v{c.parent} serves on"
                )
                self._end_canary(period, cluster, c, reason, "cancel")
                continue
            during = dict(c.during)
            for site in members:  # the score of the model it served: candidate or parent
                served = CANARY_MODEL + cluster if site in c.sites else cluster
                score = collected.model_scores.get(site, {}).get(served)
                if score is not None:
                    had = during.get(site, (0, 0))
                    during[site] = (had[0] + score[0], had[1] + score[1])
            c = replace(c, during=during)
            self._canaries[cluster] = c
            if period < c.start + self.cfg.release.canary_periods - 1:
                continue
            verdict = canary_verdict(
                c.sites,
                as_site_scores(c.before),
                as_site_scores(c.during),
                margin=self.cfg.release.canary_margin,
                min_samples=1,
            )
            payload = {**verdict.to_dict(), "cluster": cluster}
            self.registry.record(
                "canary",
                period=period,
                version=c.version,
                payload=payload,
                key=f"p{period}-c{cluster}-canary",
            )
            reason = f"cluster {cluster}'s canary of v{c.version}: {verdict.reason}"
            if verdict.action.value == "promote":
                del self._canaries[cluster]
                quality = _accuracy_of(c.holdout)
                self.clusters = self.clusters.refined(
                    cluster, period, c.version, c.holdout, quality
                )
                self._crown(cluster, c.version, period, reason)
                if self.cfg.release.watch_periods > 0:
                    until = period + self.cfg.release.watch_periods
                    self._watches[cluster] = Watch(c.version, c.parent, until)
                self.timeline.decision(
                    {"period": period, "cluster": "canary promote", "id": cluster,
                     "version": c.version, "reason": reason}
                )  # fmt: skip
            else:
                self._end_canary(period, cluster, c, reason, "rollback")
            log.info("period %d: %s", period, reason)

    def _end_canary(
        self, period: int, cluster: int, c: ClusterCanary, reason: str, how: str
    ) -> None:
        """The candidate under canary is withdrawn: ``rolled_back`` (it served)."""
        del self._canaries[cluster]
        self.registry.reject(
            c.version,
            reason=reason,
            period=period,
            status=Status.rolled_back,
            key=f"p{period}-c{cluster}-canary-{how}",
        )
        self.timeline.decision(
            {"period": period, "cluster": f"canary {how}", "id": cluster,
             "version": c.version, "reason": reason}
        )  # fmt: skip

    def _roll_back(self, period: int, cluster: int, w: Watch, reason: str) -> None:
        """The registry's side of a cluster's rollback: the withdrawn version ends
        ``rolled_back`` and the cluster's alias names its parent again. The version that
        serves the most sites is the registry's champion and rolls back as one; for another,
        the rollback is an event naming its cluster."""
        key = f"p{period}-c{cluster}-rollback"
        status = self.registry.get(w.version).status
        if status is Status.champion:  # the cluster's alias follows the registry's rollback
            self.registry.rollback(to=w.parent, reason=reason, period=period, key=key)
            return
        self._crown(cluster, w.parent, period, reason, replaced=Status.rolled_back)
        self.registry.record(
            "rollback",
            period=period,
            version=w.parent,
            payload={"from": w.version, "to": w.parent, "cluster": cluster, "reason": reason},
            key=key,
        )

    def _train_cluster(
        self,
        period: int,
        sites: tuple[int, ...],
        cluster: int,
        parent: int,
        target: float | None,
        key: str,
        reason: str,
        trigger: str,
    ) -> tuple[Outcome, int]:
        """Rounds on ``sites`` alone from ``parent``'s weights to a plateau; the candidate,
        registered as a version of ``cluster``. Each site trains on its buffer; a new
        concept's sites (``cluster`` not founded yet) start theirs now: their earlier windows
        are of the concept they left."""
        done = self.state.trainings.get(key)
        if done is not None:  # trained before the run was killed: what it produced
            version = int(done["version"])
            return outcome_from(done, self.registry.load(version)), version
        new = cluster not in self.clusters.clusters
        self._train_sites = frozenset(sites)
        buffer = self.cfg.adaptation.buffer_periods
        self._train_since = {
            s: period if new else self.clusters.buffer_start(s, period, buffer) for s in sites
        }
        try:
            weights = self.registry.load(parent)
            plateau = self.state.plateau
            if plateau is None or plateau.key != key:  # else resumed where it was killed
                baseline = self._validate(period, weights)
                plateau = Plateau(
                    period=period, action="warm", baseline=baseline, target=target, key=key
                )
            outcome = self._train_to_plateau(plateau, weights, target)
            version = self._register(
                outcome, period, trigger, reason, parent, key=key, cluster=cluster
            )
        finally:
            self._train_sites = self._train_since = None
            self.state.plateau = None
        self.state.trainings[key] = outcome_record(outcome, version)
        self._checkpoint({})
        return outcome, version

    def _gate(
        self, period: int, version: int, candidate: SiteScores, baseline: SiteScores, key: str
    ) -> bool:
        c = self.cfg.release
        decision = gate(
            candidate, baseline, c.global_margin, c.site_margin, min_site_total=c.min_site_examples
        )
        self.registry.record(
            "gate", period=period, version=version, payload=decision.to_dict(), key=f"{key}-gate"
        )
        if not decision.promote:
            self.registry.reject(
                version, reason=decision.reason, period=period, key=f"{key}-reject"
            )
        return decision.promote

    def _crown(
        self,
        cluster: int,
        version: int,
        period: int,
        reason: str,
        replaced: Status = Status.retired,
    ) -> None:
        """``version`` is ``cluster``'s champion in the registry (its ``cluster-N`` alias);
        the version it replaces ends ``replaced`` (superseded, or withdrawn)."""
        self.registry.set_cluster_champion(
            cluster,
            version,
            reason=reason,
            period=period,
            key=f"p{period}-c{cluster}-v{version}",
            replaced=replaced,
        )

    def _serve_largest(self, period: int) -> None:
        """The registry's champion is the model that serves the most sites."""
        counts: dict[int, int] = {}
        for cluster in self.clusters.assignment.values():
            version = self.clusters.clusters[cluster].version
            counts[version] = counts.get(version, 0) + 1
        largest = max(counts, key=lambda v: (counts[v], v))
        if largest != self.lifecycle.champion_version():
            reason = f"serves the most sites ({counts[largest]} of {sum(counts.values())})"
            self.registry.promote(largest, reason=reason, period=period, key=f"p{period}-promote")
        self.registry.record(
            "clusters",
            period=period,
            payload={
                "assignment": {str(s): c for s, c in sorted(self.clusters.assignment.items())},
                "versions": {str(k): c.version for k, c in sorted(self.clusters.clusters.items())},
            },
            key=f"p{period}-clusters",
        )

    # ------------------------------------------------------------------ scores

    def _holdout(self, period: int, version: int, sites: tuple[int, ...]) -> SiteScores:
        scores = self._evaluate(period, self.registry.load(version)).scores
        return {s: scores[s] for s in sites if s in scores}

    def _serving_scores(self, period: int, sites: tuple[int, ...]) -> SiteScores:
        """Each site's holdout score under the model it serves now."""
        out: SiteScores = {}
        for site in sites:
            cluster = self.clusters.assignment.get(site)
            if cluster is None:
                continue
            out |= self._holdout(period, self.clusters.clusters[cluster].version, (site,))
        return out

    def _window_scores(self, cluster: int, sites: tuple[int, ...]) -> dict[int, Score]:
        """``cluster``'s model's scores on ``sites``' windows of the period (prequential)."""
        scores = self._model_scores
        return {s: scores[s][cluster] for s in sites if cluster in scores.get(s, {})}

    def _collect(self, period: int, weights: Weights, edges: HistogramEdges) -> CollectedStats:
        collected = super()._collect(period, weights, edges)
        self._model_scores = collected.model_scores
        return collected

    # ------------------------------------------------------------------ records

    def _record_assignment(self, period: int) -> None:
        state = self.clusters
        for site, cluster in sorted(state.assignment.items()):
            self._assignments.append((period, site, cluster, state.clusters[cluster].version))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(ASSIGNMENT)
        writer.writerows(self._assignments)
        atomic_replace(self.run_dir / CLUSTERS_CSV, lambda tmp: tmp.write_text(buffer.getvalue()))

    def _finish(self) -> dict[str, object]:
        serving = self.clusters.serving
        self.summary_extras = _with(
            self.summary_extras,
            {
                "adaptation": self.cfg.adaptation.mode.value,
                "clusters_founded": len(self.clusters.clusters),
                "clusters_serving": len(serving),
                "cluster_by_site": " ".join(
                    f"{s}:{c}" for s, c in sorted(self.clusters.assignment.items())
                ),
            },
        )
        summary = super()._finish()
        try:
            plot_clusters(self._assignments, self.truth_for_plot, self.run_dir / CLUSTERS_PNG)
        except (OSError, ValueError) as err:
            log.warning("could not draw %s: %s", CLUSTERS_PNG, err)
        return summary


def plot_clusters(
    assignments: list[tuple[int, int, int, int]], truth: np.ndarray | None, path: Path
) -> None:
    """Sites x periods coloured by the cluster each site served, beside the true concepts
    when the scenario knows them."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state to touch

    sites = 1 + max(site for _, site, _, _ in assignments)
    periods = 1 + max(period for period, _, _, _ in assignments)
    found = np.full((sites, periods), np.nan)
    for period, site, cluster, _ in assignments:
        found[site, period] = cluster
    panels = [("cluster assigned at the end of the period", found)]
    if truth is not None:
        panels.insert(0, ("true concept", truth.astype(np.float64)))
    fig = Figure(figsize=(5 * len(panels), 0.35 * sites + 1.6))
    for axis, (title, matrix) in zip(
        np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True
    ):
        axis.imshow(matrix, aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axis.set(title=title, xlabel="monitoring period", ylabel="site")
        axis.set_xticks(range(periods))
        axis.set_yticks(range(sites))
        for (site, period), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                axis.text(period, site, int(value), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _with(extras: Any, more: Mapping[str, object]) -> Any:
    return lambda: {**extras(), **more}


def _accuracy_of(scores: Mapping[int, Score]) -> float:
    total = sum(n for _, n in scores.values())
    return sum(c for c, _ in scores.values()) / total if total else math.nan


def _pooled_accuracy(scores: Mapping[int, Score], sites: Mapping[int, Any]) -> float:
    return _accuracy_of({s: scores[s] for s in sites if s in scores})


def _reason(plan: PeriodPlan, groups: list[tuple[int, ...]], refreshed: list[int]) -> str:
    parts = []
    if plan.merges:
        parts.append(f"{len(plan.merges)} merge(s)")
    recurrences = [m for m in plan.moves if m.kind == "recurrence"]
    elsewhere = [m for m in plan.moves if m.kind == "better elsewhere"]
    if recurrences:
        parts.append("recurring concept at sites " + ",".join(str(m.site) for m in recurrences))
    if elsewhere:
        parts.append("better served elsewhere: sites " + ",".join(str(m.site) for m in elsewhere))
    followed = [m for m in plan.moves if m.kind == "oracle"]
    if followed:
        parts.append(
            "to their true concept's model: sites " + ",".join(str(m.site) for m in followed)
        )
    for sites in groups:
        parts.append("new concept at sites " + ",".join(str(s) for s in sites))
    if refreshed:
        parts.append("refreshed on the buffers: cluster " + ",".join(map(str, refreshed)))
    if not parts:
        drifted = len(plan.drifted)
        return f"{drifted} site(s) drifted" if drifted else "every site fits its cluster's model"
    return "; ".join(parts)


def _combined(outcomes: list[Outcome]) -> Outcome | None:
    if not outcomes:
        return None
    last = outcomes[-1]
    return replace(
        last,
        action="; ".join(o.action for o in outcomes),
        rounds=sum(o.rounds for o in outcomes),
    )

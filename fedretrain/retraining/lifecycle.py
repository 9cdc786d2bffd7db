"""The release lifecycle: how a candidate becomes the champion, and how a champion is undone.

A retrained model meets the validation gate (:func:`fedretrain.registry.gate`): evaluated with
the champion on every site's holdout of the period. One that passes is promoted, or first served
by a share of sites for ``release.canary_periods`` periods (a canary) and promoted or rolled back
on their prequential scores against the other sites' (:func:`fedretrain.registry.canary_verdict`).
A fresh champion is watched for ``release.watch_periods`` periods and rolled back to its parent
if the parent does better on current data.

Every step is an event in the registry, keyed by period, so a resumed run that repeats a step
records it once. What the lifecycle remembers between periods is a frozen
:class:`~fedretrain.retraining.release_state.ReleaseState`; the checkpoint keeps its
``to_dict()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fedretrain.config import ReleaseConfig
from fedretrain.errors import FederationError
from fedretrain.monitor.stats import PeriodStats
from fedretrain.registry import (
    Event,
    Registry,
    Status,
    canary_verdict,
    choose_canary_sites,
    gate,
)
from fedretrain.registry.scores import ScoreLike, Site
from fedretrain.retraining.port import CanaryRequest, SiteScores
from fedretrain.retraining.release_state import Canary, ReleaseState, Watch

log = logging.getLogger(__name__)


def as_site_scores(scores: Mapping[int, tuple[int, int]]) -> dict[Site, ScoreLike]:
    """The scores typed as :func:`canary_verdict` takes them (its site ids are any hashable)."""
    return {site: (c, n) for site, (c, n) in scores.items()}


def prequential_scores(stats: PeriodStats | None) -> SiteScores:
    """Each site's (correct, labelled) under the model it served in a period.

    Private statistics are noisy: they are rounded back to counts, clipped to be consistent.
    """
    if stats is None:
        return {}
    scores = {}
    for site, window in stats.sites.items():
        total = max(int(round(float(window.confusion.sum()))), 0)
        correct = min(max(int(round(float(np.trace(window.confusion)))), 0), total)
        scores[site] = (correct, total)
    return scores


class Lifecycle:
    """Gate, canary, promotion, watch and rollback over a run's registry.

    Parameters
    ----------
    registry : Registry
        Where versions, aliases and every decision are recorded.
    config : ReleaseConfig
        The margins and periods of the rules above.
    seed : int
        Seeds the draw of canary sites (with the period), so a resumed run draws the same.
    state : ReleaseState
        Where a resumed run's lifecycle was.
    """

    def __init__(
        self,
        registry: Registry,
        config: ReleaseConfig,
        seed: int,
        state: ReleaseState | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.seed = seed
        self.state = state or ReleaseState()

    def champion_version(self) -> int:
        champion = self.registry.champion()
        if champion is None:
            raise FederationError("the registry has no champion")
        return champion.version

    def release(
        self,
        version: int,
        period: int,
        candidate: SiteScores,
        champion: SiteScores,
        *,
        reuse: bool = False,
        candidate_groups: np.ndarray | None = None,
        champion_groups: np.ndarray | None = None,
        candidate_memory: SiteScores | None = None,
        champion_memory: SiteScores | None = None,
    ) -> bool:
        """The gate on the sites' holdout scores (and, with groups of users, each model's
        confusion per group, summed over the sites; with ``release.memory_periods``, each
        model's scores on earlier periods' holdouts), then a promotion or a canary.

        Returns False if the gate refused the version: a new candidate is then rejected; a
        former champion offered for ``reuse`` keeps its status (the refusal is the gate
        event). A former champion that passes is promoted at once: it has served before.

        A resumed run that repeats the step takes the gate's recorded decision (the champion
        it was compared with may since have changed) and records nothing twice.
        """
        c = self.config
        key = f"p{period}-reuse-gate" if reuse else f"p{period}-gate"
        recorded = self._recorded("gate", key)
        if recorded is not None and recorded.version == version:
            passed, reason = bool(recorded.payload["promote"]), str(recorded.payload["reason"])
        else:
            decision = gate(
                candidate,
                champion,
                c.global_margin,
                c.site_margin,
                min_site_total=c.min_site_examples,
                candidate_groups=candidate_groups,
                champion_groups=champion_groups,
                group_margin=c.group_margin,
                candidate_memory=candidate_memory,
                champion_memory=champion_memory,
                forgetting_margin=c.forgetting_margin,
            )
            passed, reason = decision.promote, decision.reason
            self.registry.record(
                "gate", period=period, version=version, payload=decision.to_dict(), key=key
            )
        if not passed:
            if not reuse:
                self.registry.reject(version, reason=reason, period=period, key=f"p{period}-reject")
            return False
        if c.canary_fraction > 0 and not reuse:
            sites = choose_canary_sites(sorted(candidate), c.canary_fraction, [self.seed, period])
            if self.registry.aliases().get("candidate") != version:
                self.registry.set_alias("candidate", version, reason="canary", period=period)
            canary = Canary(version, tuple(int(s) for s in sites), start=period + 1)
            self.state = replace(self.state, canary=canary)
            return True
        self.promote(version, period, reason)
        return True

    def promote(self, version: int, period: int, reason: str) -> None:
        """Make ``version`` the champion and, with ``watch_periods``, put it on probation
        against the champion it replaced (read from the promotion's event on a resume)."""
        key = f"p{period}-promote"
        done = self._recorded("promote", key)
        previous = done.payload.get("from") if done is not None else self.champion_version()
        self.registry.promote(version, reason=reason, period=period, key=key)
        if self.config.watch_periods > 0 and previous is not None and previous != version:
            until = period + self.config.watch_periods
            self.state = replace(self.state, watch=Watch(version, int(previous), until))

    def _recorded(self, kind: str, key: str) -> Event | None:
        """The event recorded under ``key``, if a run (before a crash) got that far."""
        return next((e for e in self.registry.events(kind=kind) if e.key == key), None)

    def watch(self, period: int, validate: Callable[[int], float]) -> None:
        """Roll a fresh champion back to its parent if the parent does better on ``period``.

        ``validate(version)`` is that version's federated validation accuracy on the period.
        """
        w = self.state.watch
        if w is None:
            return
        if self.champion_version() != w.version or period > w.until:
            self.state = replace(self.state, watch=None)
            return
        champion_acc, parent_acc = validate(w.version), validate(w.parent)
        self.registry.record(
            "watch",
            period=period,
            version=w.version,
            payload={"champion": champion_acc, "parent": parent_acc},
            key=f"p{period}-watch",
        )
        margin = self.config.rollback_margin
        if parent_acc > champion_acc + margin:
            reason = (
                f"fresh champion v{w.version} scores {champion_acc:.4f} on period {period}, "
                f"its parent v{w.parent} {parent_acc:.4f} (rollback_margin {margin})"
            )
            self.registry.rollback(
                to=w.parent, reason=reason, period=period, key=f"p{period}-rollback"
            )
            self.state = replace(self.state, watch=None)
        elif period >= w.until:
            self.state = replace(self.state, watch=None)

    def canary_request(self, period: int, load: Callable[[int], Any]) -> CanaryRequest | None:
        """What the statistics query of ``period`` carries for a running canary, if any."""
        c = self.state.canary
        if c is None or period < c.start:
            return None
        return CanaryRequest(load(c.version), c.sites)

    def score_canary(
        self,
        period: int,
        stats: PeriodStats,
        stats_of: Callable[[int], PeriodStats | None],
    ) -> None:
        """Add ``period``'s prequential scores to the canary; decide at its last period.

        ``stats_of(p)`` gives a kept period's statistics: the baseline is the period the gate
        passed, when the champion served every site.
        """
        c = self.state.canary
        if c is None or period < c.start:
            return
        before = c.before
        if before is None:
            before = prequential_scores(stats_of(c.start - 1))
        during = dict(c.during)
        for site, (correct, total) in prequential_scores(stats).items():
            had_correct, had_total = during.get(site, (0, 0))
            during[site] = (had_correct + correct, had_total + total)
        c = replace(c, before=before, during=during)
        if period < c.start + self.config.canary_periods - 1:
            self.state = replace(self.state, canary=c)
            return
        verdict = canary_verdict(
            c.sites,
            as_site_scores(before),
            as_site_scores(during),
            margin=self.config.canary_margin,
            min_samples=1,
        )
        self.registry.record(
            "canary",
            period=period,
            version=c.version,
            payload=verdict.to_dict(),
            key=f"p{period}-canary",
        )
        self.state = replace(self.state, canary=None)
        if verdict.action.value == "promote":
            self.promote(c.version, period, f"canary: {verdict.reason}")
        else:
            self.registry.reject(
                c.version,
                reason=f"canary: {verdict.reason}",
                period=period,
                status=Status.rolled_back,
                key=f"p{period}-canary-reject",
            )

    def cancel_canary(self, period: int, reason: str) -> None:
        """A new retrain supersedes a running canary: its candidate is rejected."""
        c = self.state.canary
        if c is not None:
            self.registry.reject(c.version, reason=reason, period=period, key=f"p{period}-cancel")
            self.state = replace(self.state, canary=None)

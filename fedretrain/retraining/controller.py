"""The retraining controller: monitoring periods, the trigger, retrains and their release.

Each period the sites score the serving model on their new window and send only summable
statistics (prequential scoring: the model meets the data before anything trains on it). The
:class:`~fedretrain.retraining.drift_watch.DriftWatch` reads them and decides, with a logged
reason; a retrain either reuses a stored model that wins on current data or fine-tunes the
champion until federated validation stops improving, re-initialising when warm starting stalls.
Every retrained model is a candidate in the run's registry and goes through the release
lifecycle (:mod:`fedretrain.retraining.lifecycle`).

The controller reaches the sites only through a :class:`~fedretrain.retraining.port.Federation`.
It checkpoints after every completed round and period (:mod:`fedretrain.checkpoint`);
``resume=True`` continues a killed run from its folder (:mod:`fedretrain.retraining.resume`).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedretrain.checkpoint import CheckpointStore, Plateau, RunState
from fedretrain.config import STATEFUL_STRATEGIES, RetrainStrategy, RunConfig
from fedretrain.errors import FederationError
from fedretrain.html_report import write_report
from fedretrain.metrics import group_recalls
from fedretrain.monitor.base import Seed
from fedretrain.monitor.private import statistics_privacy, stats_epsilon
from fedretrain.monitor.stats import HistogramEdges, PeriodStats
from fedretrain.monitor.windows import RetrainWindows, Scheduled, schedule
from fedretrain.privacy.tracking import EpsilonTracker
from fedretrain.registry import Registry
from fedretrain.report import RoundRow, RunReport
from fedretrain.retraining import resume as resume_run
from fedretrain.retraining import strategies
from fedretrain.retraining.drift_watch import DriftWatch
from fedretrain.retraining.lifecycle import Lifecycle
from fedretrain.retraining.outcome import REJECTED, Outcome, released
from fedretrain.retraining.port import (
    CollectedStats,
    Evaluation,
    Federation,
    ModelFactory,
    Serving,
    SiteScores,
    TrainedRound,
    Weights,
    digest,
)
from fedretrain.retraining.reuse import former_champion
from fedretrain.retraining.summary import period_row, retrain_cost, run_facts
from fedretrain.timeline import PeriodRow, Timeline
from fedretrain.tracking import NoTracking, Tracker
from fedretrain.validation import Rejection

log = logging.getLogger(__name__)

NO_DATA = "no new data at any site"
# Of the run's time, the most that rewriting report.html as the run goes may take: a long run's
# page (its timeline grows) is then rewritten every few periods instead of after each one.
PAGE_SHARE = 0.05


class Controller:
    """Runs one drift scenario through a federation; writes the run folder; resumes a killed one.

    Parameters
    ----------
    cfg : RunConfig
        The run's typed config (parsed once, at the entry point).
    federation : Federation
        The sites.
    drift : DriftWatch
        The monitor and the trigger policy.
    models : ModelFactory
        Fresh weights for the initial model and re-initialisations; the final model's file.
    run_dir : Path
        The run folder.
    report : RunReport
        ``metrics.csv`` and ``rejections.csv``; the federation records rejections in it too.
    num_features : int
        Input features a site's statistics describe (histograms are per feature).
    change_points : list of int
        The scenario's true change points (scoring; empty in deployment).
    site_changes : mapping of int to list of (int, int), or None
        Each site's own change points with the concept it changed to (simulation), for
        scoring the monitor site by site.
    config_hash : str
        Recorded with every registered version.
    epsilon : EpsilonTracker or None
        DP-SGD's per-site ε, which the federation feeds.
    deployed : bool
        Real sites: no known change points to score, site data problems counted.
    summary_extras : callable
        More entries for ``summary.json`` at the end (e.g. the user-level ε of a DP strategy).
    fixed_rounds : int or None
        A static run: one period without monitoring statistics and exactly this many rounds,
        the last model kept; ``metrics.csv`` starts with the fresh model's round 0.
    out : TextIO
        Where the per-round and per-period lines go.
    resume : bool
        Continue from the run folder's last checkpoint.
    tracker : Tracker or None
        Experiment tracking (:mod:`fedretrain.tracking`); None: the run folder alone.
    clock : callable
        The wall clock (Unix seconds): it paces deployed periods and dates each period's
        start, which ``policy.windows`` and ``policy.max_rounds_per_day`` judge.
    """

    _first_cluster: int | None = None  # the registry cluster of the initial model, if any

    def __init__(
        self,
        cfg: RunConfig,
        federation: Federation,
        drift: DriftWatch,
        models: ModelFactory,
        run_dir: Path,
        report: RunReport,
        *,
        num_features: int,
        change_points: list[int],
        config_hash: str,
        site_changes: Mapping[int, list[tuple[int, int]]] | None = None,
        epsilon: EpsilonTracker | None = None,
        deployed: bool = False,
        summary_extras: Callable[[], Mapping[str, object]] = dict,
        fixed_rounds: int | None = None,
        out: TextIO = sys.stdout,
        resume: bool = False,
        tracker: Tracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        p = cfg.policy
        self.windows = RetrainWindows(p.windows, p.timezone, p.max_rounds_per_day)
        self.tracker = tracker or NoTracking()
        self.federation = federation
        self.drift = drift
        self.models = models
        self.run_dir = run_dir
        self.report = report
        self.num_features = num_features
        self.change_points = change_points
        self.site_changes = site_changes
        self.config_hash = config_hash
        self.epsilon = epsilon
        self.deployed = deployed
        self.summary_extras = summary_extras
        self.fixed_rounds = fixed_rounds
        self.resume = resume
        self.num_periods = 1 if fixed_rounds is not None else cfg.scenario.num_periods
        self.timeline = Timeline(run_dir, self.num_periods, out)
        self._page_due = 0.0  # perf_counter time before which report.html is not rewritten
        if resume:
            ledgers = Path(cfg.privacy.ledger_dir) if cfg.privacy.ledger_dir else None
            resume_run.check_resumable(run_dir, ledgers)  # before anything is written or asked
        self.registry = Registry(run_dir, create=not resume)
        self.lifecycle = Lifecycle(self.registry, cfg.release, cfg.runtime.seed)
        self.checkpoints = CheckpointStore(run_dir / "checkpoint")
        self.state = RunState()
        self._restored: dict[str, Weights] = {}
        self._last_validation = math.nan
        self._evaluations: dict[tuple[int, str], Evaluation] = {}
        self._drifted: frozenset[int] = frozenset()  # the sites the period's alarms named
        self._train_sites: frozenset[int] | None = None  # a cluster's sites, while it trains
        self._train_since: Mapping[int, int] | None = None  # ... and their buffers' starts
        # The retrain strategy's training under way (fedretrain.retraining.strategies): each
        # site's first window (full), the arrays that train (transfer), the proximal anchor.
        self._plan_since: Mapping[int, int] | None = None
        self._plan_trainable: frozenset[str] | None = None
        self._anchor: Weights | None = None
        # A static run's rounds do not wait on their evaluation, so each round's train
        # instruction also evaluates the model it sends (the previous round's): one message
        # wave per round instead of two, where the evaluation would reach the same sites (the
        # same sampling; no simulated dropout, which skips a site's train message only).
        r = cfg.runtime
        self._one_wave = (
            fixed_rounds is not None
            and r.fraction_evaluate == r.fraction_train
            and cfg.attack.dropout == 0
        )
        self._lagged = fixed_rounds is None and one_wave_search(cfg)

    @property
    def server_round(self) -> int:
        """Training rounds of the run so far, across retrains."""
        return self.state.server_round

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, object]:
        """Every period of the scenario (the rest of them after a resume); the summary."""
        replayed = self._restore() if self.resume else None
        if self.state.completed_period < 0:
            self._pace(0)
            if self.fixed_rounds is None:
                self._initial_period(replayed)
            else:
                self._static_training()
            replayed = None
        for period in range(self.state.completed_period + 1, self.num_periods):
            self._pace(period)
            self._period(period, replayed)
            replayed = None
        return self._finish()

    def _scored_periods(self, periods: int) -> int:
        """Of ``periods``, how many send per-model scores besides the statistics (none: one
        model serves every site; :class:`~fedretrain.retraining.clustered.
        ClusteredController` says otherwise)."""
        del periods
        return 0

    def _finish(self) -> dict[str, object]:
        if self.epsilon is not None:
            self.epsilon.plot(self.run_dir / "privacy.png")
        champion = self._champion()
        self.models.save(champion, self.run_dir / "model.safetensors")
        facts = run_facts(
            self.cfg,
            self.registry,
            self.report.rejections,
            self.run_dir,
            deployed=self.deployed,
            monitored=self.fixed_rounds is None,
        )
        privacy = {"privacy": self.epsilon.summary()} if self.epsilon is not None else {}
        extra = {**facts, **privacy, **self.summary_extras()}
        if self.fixed_rounds is None:
            extra["statistics_privacy"] = statistics_privacy(self.cfg.privacy)
            periods = self.cfg.scenario.num_periods
            stats_eps = stats_epsilon(self.cfg.privacy, periods, self._scored_periods(periods))
            if stats_eps is not None:
                extra["stats_epsilon"] = stats_eps
            initial = next((r.rounds for r in self.timeline.rows if r.period == 0), 0)
            trained = self.models.trained  # frozen arrays (train.freeze) never travel
            model_bytes = sum(
                np.asarray(a).nbytes
                for name, a in champion.items()
                if trained is None or name in trained
            )
            ahead = self.state.ahead_site_rounds
            extra |= retrain_cost(self.report.rows, initial, model_bytes, ahead)
            points = None if self.deployed else self.change_points
            self.report.plot()  # the rounds of every retrain, as a static run draws them
            summary = self.timeline.finish(points, extra, self.site_changes)
        else:
            summary = self.report.finish(extra)
        self._write_page(finished=True)
        self.tracker.finish(summary, self.registry)
        self.registry.close()
        return summary

    def _static_training(self) -> None:
        """A run without monitoring periods: round 0 scores the fresh model, then exactly
        ``fixed_rounds`` rounds; the last model is the run's (its only version)."""
        initial = self.models.fresh(self.cfg.runtime.seed)
        plateau = self.state.plateau
        if plateau is None:  # not a resume after the initial evaluation
            plateau = Plateau(period=0, action="initial")
            if self._one_wave:  # round 0's evaluation comes with round 1's train replies
                plateau.pending = [0, None, 0, 0.0]
            else:
                started = time.perf_counter()
                evaluation = self._evaluate(0, initial)
                seconds = time.perf_counter() - started
                self._add_round(
                    RoundRow.from_eval(0, evaluation.result, math.nan, 0, evaluation.sites, seconds)
                )
            self.state.plateau = plateau
            self._checkpoint({"start": initial, "current": initial, "best": initial})
        outcome = self._train_to_plateau(plateau, initial, None)
        reason = f"static run of {outcome.rounds} rounds"
        version = self._register(outcome, 0, "initial", reason, parent=None)
        self.registry.promote(version, reason="the run's model", period=0, key="p0-promote")
        self._complete(0)

    def _initial_period(self, replayed: CollectedStats | None) -> None:
        """Period 0: statistics fix the histogram edges; the first model trains to a plateau."""
        cfg = self.cfg
        start = time.perf_counter()
        initial = self.models.fresh(cfg.runtime.seed)
        no_edges = HistogramEdges(np.zeros((self.num_features, 0)))
        collected = replayed or self._collect(0, initial, no_edges)
        stats = collected.stats
        if _no_data(stats):
            raise FederationError(
                "no site has data for the first period, so there is nothing to train on: put "
                "files in the sites' folders (or wait for them) and start again"
            )
        total = stats.total
        edges = HistogramEdges.from_moments(
            total.n, total.x_sum, total.x_sq_sum, cfg.monitor.histogram_bins
        )
        self.state.edges = edges.interior.tolist()
        plateau = self.state.plateau or Plateau(period=0, action="initial")
        outcome = self._train_to_plateau(plateau, initial, None)
        version = self._register(
            outcome, 0, "initial", "initial training", parent=None, cluster=self._first_cluster
        )
        self.registry.promote(version, reason="initial model", period=0, key="p0-promote")
        self._spent(0, outcome.rounds)
        # Period 0's histograms used no edges yet: only the model's scores seed the monitor.
        self.drift.trained(0, initial=True, seed=self._seed(0, None))
        self._first_served(version)
        self._add_row(
            period_row(collected, None, True, "initial training", outcome, version, start)
        )
        self._complete(0)

    def _first_served(self, version: int) -> None:
        """Period 0's model is registered and promoted (a hook; one model needs nothing)."""
        del version

    def _period(self, period: int, replayed: CollectedStats | None) -> None:
        start = time.perf_counter()
        edges = HistogramEdges(np.asarray(self.state.edges, dtype=np.float64))
        collected = replayed or self._collect(period, self._champion(), edges)
        stats = collected.stats
        if _no_data(stats):
            self._idle_period(collected, start)
            return
        plateau = self.state.plateau
        if plateau is None or plateau.period != period:  # a resumed retrain did these already
            self.lifecycle.watch(period, lambda v: self._validate(period, self.registry.load(v)))
            self.lifecycle.score_canary(period, stats, self.checkpoints.load_stats)
        observation = self.drift.observe(stats)
        self._drifted = observation.alarm_sites
        decision = self._schedule(period, observation.decision.retrain, observation.decision.reason)
        logged = observation.to_dict()
        if decision.schedule:  # the windows held a trigger, or a waiting one retrains now
            logged |= {"schedule": decision.schedule, "scheduled": decision.reason}
        self.timeline.decision(logged)
        retrained: Outcome | None = None
        if decision.retrain:
            retrained = self._retrain(period, decision.reason)
            changed = released(retrained.action) or not self.state.keep_reference_on_reject
            seed = self._seed(period, stats) if self._promoted(period, retrained) else None
            self.drift.trained(period, serving_changed=changed, seed=seed)
            self._spent(period, retrained.rounds)
        self.state.waiting = None if decision.waiting is None else list(decision.waiting)
        serving = self.lifecycle.champion_version()
        row = period_row(
            collected, observation, decision.retrain, decision.reason, retrained, serving, start
        )
        change_point = period in self.change_points
        self._add_row(replace(row, change_point=change_point, schedule=decision.schedule))
        self._complete(period)

    def _schedule(self, period: int, fired: bool, reason: str) -> Scheduled:
        """The policy's verdict held to ``policy.windows`` and ``policy.max_rounds_per_day``,
        at the time the period started (kept in the checkpoint: a resumed period is judged at
        the same time)."""
        waiting = self.state.waiting
        now = self._started_at(period)
        return schedule(
            self.windows,
            fired,
            reason,
            None if waiting is None else (int(waiting[0]), str(waiting[1])),
            period,
            now,
            self._rounds_on(self.windows.day(now)),
            self.cfg.retrain.max_rounds,
        )

    def _started_at(self, period: int) -> float:
        started = self.state.period_started
        if started is not None and int(started[0]) == period:
            return float(started[1])
        return self.clock()

    def _rounds_on(self, day: str) -> int:
        spent = self.state.day_rounds
        return int(spent[1]) if spent is not None and spent[0] == day else 0

    def _spent(self, period: int, rounds: int) -> None:
        """Count ``rounds`` against the day of ``period``'s start (the daily budget)."""
        day = self.windows.day(self._started_at(period))
        self.state.day_rounds = [day, self._rounds_on(day) + rounds]

    def _idle_period(self, collected: CollectedStats, start: float) -> None:
        """A period in which no site had new data: nothing to monitor or train."""
        period = collected.stats.period
        log.warning("period %d: no site has new data; nothing to monitor", period)
        self.timeline.decision({"period": period, "retrain": False, "reason": NO_DATA})
        serving = self.lifecycle.champion_version()
        self._add_row(period_row(collected, None, False, NO_DATA, None, serving, start))
        self._complete(period)

    def _pace(self, period: int) -> None:
        """With ``scenario.period_seconds``, wait until that long after the previous period
        started (at once if that is past, or if ``period`` already started before a resume)."""
        seconds = self.cfg.scenario.period_seconds
        started = self.state.period_started
        if started is not None and int(started[0]) == period:
            return
        if seconds > 0 and started is not None:
            wait = started[1] + seconds - self.clock()
            if wait > 0:
                log.info("period %d starts in %.0f s", period, wait)
                time.sleep(wait)
        self.state.period_started = [period, self.clock()]

    def _promoted(self, period: int, retrained: Outcome) -> bool:
        """Whether the retrain at ``period`` made its model the champion (not a canary, not
        refused). Read from the registry, so a resumed period that was killed after its
        promotion answers as the uninterrupted one."""
        if not released(retrained.action):
            return False
        champion = self.lifecycle.champion_version()
        if retrained.reused_version is not None:
            return champion == retrained.reused_version
        return self.registry.get(champion).period == period

    def _seed(self, period: int, stats: PeriodStats | None) -> Seed:
        """The monitor's new reference after a promotion at ``period``: the period's statistics
        and the champion's scores on its holdouts (already evaluated for the gate), which are
        kept for resume's replay."""
        scores = self._evaluate(period, self._champion()).scores
        self.checkpoints.save_seed(period, scores)
        return Seed(stats, scores)

    # ------------------------------------------------------------------ checkpoints

    def _restore(self) -> CollectedStats | None:
        """Load the checkpoint, cut the logs back to it and replay the monitor and the policy.

        Returns the in-progress period's statistics if they were kept (the sites are not asked
        again), else None.
        """
        state, arrays = self.checkpoints.load()
        self.state = state
        state.restore_random()
        self.lifecycle.state = state.release
        self._restored = dict(arrays)
        kept = resume_run.cut_logs(
            self.checkpoints, state, self.report, self.timeline, self.epsilon
        )
        self._replay(state)
        log.info("resumed after period %d, round %d", state.completed_period, state.server_round)
        return kept

    def _replay(self, state: RunState) -> None:
        """Rebuild what the checkpoint does not hold: the monitor and the trigger policy,
        fed the kept statistics of every completed period again."""
        resume_run.replay(
            self.drift,
            self.checkpoints,
            self.timeline.rows,
            state.completed_period,
            keep_reference_on_reject=state.keep_reference_on_reject,
        )

    def _complete(self, period: int) -> None:
        """Checkpoint the end of ``period``."""
        self.state.completed_period = period
        self.state.plateau = None
        self.state.trainings = {}
        self._checkpoint({})

    def _checkpoint(self, arrays: Mapping[str, Weights]) -> None:
        self.state.release = self.lifecycle.state
        self.state.capture_random()
        self.checkpoints.save(self.state, {k: dict(v) for k, v in arrays.items()})

    # ------------------------------------------------------------------ retraining

    def _retrain(self, period: int, reason: str) -> Outcome:
        """Reuse a former champion that wins on current data and passes the gate, else train
        the ``retrain.strategy``'s candidates (:mod:`fedretrain.retraining.strategies`); then
        the gate, and a promotion, a canary or a rejection.

        A chosen reuse is checkpointed before its release, so a resumed run releases the same
        version instead of choosing again against a champion that may have changed.
        """
        champion_version = self.lifecycle.champion_version()
        plateau = self.state.plateau
        resumed = plateau is not None and plateau.period == period
        if plateau is None or not resumed:
            self.lifecycle.cancel_canary(period, "superseded by a new retrain")
            serving_acc = self._validate(period, self._champion())
            target = self.registry.get(champion_version).metrics.get("validation_accuracy")
            plateau = Plateau(period=period, action="warm", baseline=serving_acc, target=target)
            reused = None
            if strategies.tries_reuse(self.cfg.retrain):
                validate = functools.partial(self._validate, period)
                reused = former_champion(self.registry, self.cfg.retrain, validate, serving_acc)
                if reused is None and self.cfg.retrain.strategy is RetrainStrategy.reuse:
                    log.info("period %d: no stored version is back; fine-tuning", period)
            if reused is not None:
                plateau = replace(
                    plateau,
                    action=reused.action,
                    best_acc=reused.validation_accuracy,
                    reused=reused.reused_version,
                )
                self.state.plateau = plateau
                self._checkpoint({})
        if plateau.reused is not None:
            if self._release(plateau.reused, period, reuse=True):
                weights = self.registry.load(plateau.reused)
                return Outcome(weights, plateau.action, 0, plateau.best_acc, plateau.reused)
            log.info("period %d: %s refused at the gate; training", period, plateau.action)
            plateau = Plateau(
                period=period, action="warm", baseline=plateau.baseline, target=plateau.target
            )
            resumed = False
        plans = strategies.plans(self.cfg.retrain, self.models.head)
        if len(plans) > 1:
            return self._tournament(period, reason, plans, plateau, champion_version)
        plan = plans[0]
        if not resumed:  # a resumed one keeps its action (a warm start may have re-initialised)
            plateau = replace(plateau, action=plan.action)
        start = self._restored["start"] if resumed else self._start(period, plan)
        outcome = self._train_plan(plan, plateau, start)
        version = self._register(
            outcome, period, outcome.action, reason, champion_version, trained=plan.trainable
        )
        if not self._release(version, period):
            return replace(outcome, action=f"{outcome.action}{REJECTED}")
        return outcome

    def _tournament(
        self,
        period: int,
        reason: str,
        plans: list[strategies.Plan],
        plateau: Plateau,
        champion_version: int,
    ) -> Outcome:
        """Each plan trains its candidate to its own plateau on the period's windows, one after
        another, and is registered; the best on federated validation goes to the gate and the
        others are rejected, the standings in their reason and in ``decisions.jsonl``.

        A finished candidate is kept in the checkpoint (``RunState.trainings``), so a resumed
        tournament trains the rest only. Between candidates the checkpoint holds the retrain's
        own plateau (its baseline), which tells a resumed period that the retrain is under way.
        """
        header = Plateau(
            period=period, action="tournament", baseline=plateau.baseline, target=plateau.target
        )
        entries, outcomes = [], []
        for plan in plans:
            key = f"p{period}-{plan.name}"
            done = self.state.trainings.get(key)
            if done is None:
                current = self.state.plateau
                if current is not None and current.period == period and current.key == key:
                    p, start = current, self._restored["start"]  # killed while it trained
                else:
                    p = replace(header, action=plan.action, key=key)
                    start = self._start(period, plan)
                outcome = self._train_plan(plan, p, start)
                version = self._register(
                    outcome,
                    period,
                    outcome.action,
                    f"{reason}; tournament candidate {plan.name}",
                    champion_version,
                    key=key,
                    trained=plan.trainable,
                )
                done = outcome_record(outcome, version)
                self.state.trainings[key] = done
                self.state.plateau = header
                self._checkpoint({})
            outcomes.append(outcome_from(done, self.registry.load(int(done["version"]))))
            rounds = int(done["rounds"])
            entries.append(
                strategies.Entry(
                    plan.name, int(done["version"]), float(done["validation_accuracy"]), rounds
                )
            )
        ranked = strategies.standings(entries)
        winner = ranked[0]
        why = strategies.verdict(ranked)
        for lost in ranked[1:]:
            self.registry.reject(
                lost.version,
                reason=f"lost the tournament to v{winner.version} ({why})",
                period=period,
                key=f"p{period}-{lost.name}-lost",
            )
        self.timeline.decision(
            {
                "period": period,
                "tournament": [
                    {
                        "strategy": e.name,
                        "version": e.version,
                        "accuracy": e.accuracy,
                        "rounds": e.rounds,
                    }
                    for e in ranked
                ],
                "winner": winner.name,
                "why": why,
            }
        )
        log.info("period %d: %s", period, why)
        chosen = outcomes[[e.name for e in entries].index(winner.name)]
        spent = [o.epsilon_by_site for o in outcomes if o.epsilon_by_site is not None]
        combined = replace(
            chosen,
            rounds=sum(o.rounds for o in outcomes),
            trained_rounds=sum(o.trained_rounds for o in outcomes),
            epsilon_by_site=_summed(spent) if spent else None,
        )
        if not self._release(winner.version, period):
            return replace(combined, action=f"{combined.action}{REJECTED}")
        return combined

    def _start(self, period: int, plan: strategies.Plan) -> Weights:
        """Where ``plan``'s candidate starts at ``period``."""
        return strategies.start(
            plan, self._champion(), lambda: self.models.fresh(self._reinit_seed(period))
        )

    def _train_plan(self, plan: strategies.Plan, plateau: Plateau, start: Weights) -> Outcome:
        """``plan``'s rounds to a plateau: its arrays, its windows, its anchor."""
        period = plateau.period
        if plan.buffered:
            waiting = self.state.waiting
            change = period if waiting is None else int(waiting[0])
            first = strategies.buffer_start(period, change, self.cfg.retrain.buffer_periods)
            self._plan_since = {s: first for s in range(self.cfg.runtime.num_clients)}
        self._plan_trainable = plan.trainable
        # The anchor holds a warm start near the champion; a resumed search that already
        # re-initialised (action reinit) trains fresh weights without it.
        anchored = plan.anchored and plateau.action == "warm"
        self._anchor = self._champion() if anchored else None
        try:
            target = plateau.target if plan.stall_rule else None
            return self._train_to_plateau(plateau, start, target)
        finally:
            self._plan_since = self._plan_trainable = self._anchor = None

    def _train_to_plateau(self, plateau: Plateau, start: Weights, target: float | None) -> Outcome:
        """Federated rounds on the period's windows until validation accuracy stops improving.

        ``plateau.baseline`` is the starting model's validation accuracy on this period.
        ``target`` is the accuracy the champion reached when it was trained: a warm start still
        more than ``retrain.stall_gap`` below it after ``retrain.reinit_after`` rounds is
        abandoned for a fresh initialisation (a flipped concept is unlearnt faster from
        scratch). The best model seen, by validation accuracy, is kept. The search is
        checkpointed after every round and continues from there on resume. A static run
        (``fixed_rounds``) trains exactly that many rounds and keeps the last model.
        """
        r, p = self.cfg.retrain, plateau
        fixed = self.fixed_rounds is not None
        cap = self.fixed_rounds if self.fixed_rounds is not None else r.max_rounds
        if self.epsilon is not None and p.epsilon_mark is None:
            p.epsilon_mark = {str(k): v for k, v in self.epsilon.mark().items()}
        restored = self.resume and self.state.plateau is p
        arrays = self._restored if restored else {}
        current = arrays.get("current", start)
        best = arrays.get("best", start)
        if not p.best_action:
            p.best_action = p.action
        if not fixed and self._lagged and self._train_sites is None:
            best = self._lagged_plateau(p, start, current, best, target)
        else:
            while p.rounds < cap and (fixed or p.since_best < r.patience):
                trained = self._train_round(p.period, current)
                current, best = self._decide(p, trained, self._last_validation, best, target, fixed)
                self.state.plateau = p
                self._checkpoint({"start": start, "current": current, "best": best})
        if fixed and p.pending is not None:  # one wave per round: the last model's evaluation
            started = time.perf_counter()
            evaluation = self._evaluate(p.period, current)
            self._add_pending(p.pending, evaluation, time.perf_counter() - started)
            p.pending = None
        spent = None
        if self.epsilon is not None and p.epsilon_mark is not None:
            mark = {int(k): v for k, v in p.epsilon_mark.items()}
            spent = self.epsilon.spent_since(mark)
        return Outcome(
            best,
            p.best_action,
            p.rounds,
            p.best_acc,
            epsilon_by_site=spent,
            trained_rounds=p.trained,
            samples={int(s): n for s, n in p.samples.items()},
        )

    def _decide(
        self,
        p: Plateau,
        trained: TrainedRound,
        validation: float,
        best: Weights,
        target: float | None,
        fixed: bool = False,
    ) -> tuple[Weights, Weights]:
        """The end of round ``p.rounds + 1`` of the search, whose model (``trained``) validated
        at ``validation``: the weights the next round starts from, and the best so far."""
        r = self.cfg.retrain
        current = trained.weights
        p.rounds += 1
        if trained.sites:  # a round every site declined or that was skipped trains nothing
            p.trained += 1
            for site, n in trained.examples.items():
                p.samples[str(site)] = max(p.samples.get(str(site), 0), n)
        if fixed or validation > p.best_acc + r.min_delta:
            p.best_acc, best, p.best_action = validation, current, p.action
            p.since_best = 0
        else:
            p.since_best += 1
        stalled = target is not None and p.best_acc < target - r.stall_gap
        if p.action == "warm" and target is not None and p.rounds == r.reinit_after and stalled:
            current = self.models.fresh(self._reinit_seed(p.period))
            p.action, p.since_best = "reinit", 0
            self._anchor = None  # fresh weights are not held near the champion
        return current, best

    def _lagged_plateau(
        self, p: Plateau, start: Weights, current: Weights, best: Weights, target: float | None
    ) -> Weights:
        """:meth:`_train_to_plateau`'s search in one message wave per round; the best model.

        Each train wave also evaluates the model it sends (the previous round's), and that
        evaluation decides the previous round, as the evaluate wave of two waves a round
        would. So round k+1 trains before round k is decided; if the search stops or
        re-initialises at round k, round k+1 is dropped: its replies' records go and its
        round number is used again, so every kept round is the round two waves would train,
        on the same seeds. The checkpoint after each decision holds the decided round only; a
        resume trains the next round again. The last round allowed (``retrain.max_rounds``) is
        decided by an evaluate wave of its own.
        """
        r = self.cfg.retrain
        pending: tuple[TrainedRound, int, float] | None = None  # trained, its round, seconds
        while p.rounds < r.max_rounds and p.since_best < r.patience:
            if pending is None:  # the start, a resume or a re-initialisation: nothing to decide
                trained, seconds = self._one_wave_round(p.period, current, evaluate=False)
                self.state.server_round += 1
                pending = (trained, self.state.server_round, seconds)
                continue
            trained, server_round, seconds = pending
            started = time.perf_counter()
            upcoming: TrainedRound | None = None
            if p.rounds + 1 >= r.max_rounds:
                evaluation: Evaluation | None = self._evaluate(p.period, trained.weights)
            else:
                upcoming, ahead = self._one_wave_round(p.period, trained.weights, evaluate=True)
                evaluation = upcoming.incoming
                if evaluation is not None and evaluation.result is not None:
                    self._remember(p.period, trained.weights, evaluation)
            loss = None if math.isnan(trained.loss) else trained.loss
            took = time.perf_counter() - started if upcoming is None else 0.0
            self._add_pending([server_round, loss, trained.sites, seconds], evaluation, took)
            validation = math.nan if evaluation is None else self._accuracy(evaluation)
            current, best = self._decide(p, trained, validation, best, target)
            goes_on = p.rounds < r.max_rounds and p.since_best < r.patience
            kept = goes_on and current is trained.weights
            if upcoming is not None and not kept and p.period > 0:
                self.state.ahead_site_rounds += upcoming.sites  # trained: it cost a round
            self.state.plateau = p
            self._checkpoint({"start": start, "current": current, "best": best})
            if upcoming is not None and kept:
                self.state.server_round += 1
                pending = (upcoming, self.state.server_round, ahead)
            else:
                if upcoming is not None:  # its replies' records go; its round number is reused
                    self.report.restore(self.state.server_round, _through(self.state.server_round))
                pending = None
        return best

    def _search_round(
        self, server_round: int, period: int, weights: Weights, evaluate: bool
    ) -> TrainedRound:
        """Training round ``server_round`` of a search from ``weights``, on the strategy's
        windows, arrays and anchor; with ``evaluate``, the sites first evaluate ``weights``."""
        drifted = self._drifted if period > 0 else frozenset()
        since = self._plan_since if self._plan_since is not None else self._rehearsal(period)
        trained = self.federation.train_round(
            server_round,
            weights,
            period,
            drifted,
            evaluate_incoming=evaluate,
            since=since,
            trainable=self._plan_trainable,
            anchor=self._anchor,
        )
        return self._kept_backbone(trained, weights)

    def _one_wave_round(
        self, period: int, weights: Weights, evaluate: bool
    ) -> tuple[TrainedRound, float]:
        """:meth:`_search_round` at the round after the last one kept, which it does not
        count; its seconds."""
        started = time.perf_counter()
        trained = self._search_round(self.state.server_round + 1, period, weights, evaluate)
        return trained, time.perf_counter() - started

    def _kept_backbone(self, trained: TrainedRound, weights: Weights) -> TrainedRound:
        """Under the transfer strategy, the frozen backbone exactly as it was sent."""
        if self._plan_trainable is None:
            return trained
        kept = self._plan_trainable
        return replace(
            trained,
            weights={k: (v if k in kept else weights[k]) for k, v in trained.weights.items()},
        )

    def _reinit_seed(self, period: int) -> int:
        return int(np.random.SeedSequence([self.cfg.runtime.seed, 9, period]).generate_state(1)[0])

    def _train_round(self, period: int, weights: Weights) -> TrainedRound:
        """One federated training round on ``period``'s windows, logged in metrics.csv."""
        self.state.server_round += 1
        server_round = self.state.server_round
        started = time.perf_counter()
        drifted = self._drifted if period > 0 else frozenset()
        if self._one_wave:
            return self._train_round_evaluating(server_round, weights, period, started)
        if self._train_sites is None:
            trained = self._search_round(server_round, period, weights, evaluate=False)
        else:  # a cluster's model: only its sites train
            trained = self.federation.train_round(
                server_round,
                weights,
                period,
                drifted,
                sites=self._train_sites,
                since=self._train_since,
            )
        evaluation = self._evaluate(period, trained.weights)
        seconds = time.perf_counter() - started
        self._add_round(
            RoundRow.from_eval(
                server_round,
                evaluation.result,
                trained.loss,
                trained.sites,
                evaluation.sites,
                seconds,
            )
        )
        self._last_validation = self._accuracy(evaluation)
        return trained

    def _train_round_evaluating(
        self, server_round: int, weights: Weights, period: int, started: float
    ) -> TrainedRound:
        """A static run's round in one message wave: the sites evaluate ``weights`` (the
        previous round's model) and then train. The previous round's row, kept pending in the
        checkpoint, is written with that evaluation; this round's is pending until the next
        round, or the final evaluation, brings its own."""
        plateau = self.state.plateau
        assert plateau is not None
        trained = self.federation.train_round(server_round, weights, period, evaluate_incoming=True)
        seconds = time.perf_counter() - started
        if trained.incoming is not None and trained.incoming.result is not None:
            self._remember(period, weights, trained.incoming)
        if plateau.pending is not None:  # None: resumed from a checkpoint of two waves a round
            self._add_pending(plateau.pending, trained.incoming, 0.0)
        loss = None if math.isnan(trained.loss) else trained.loss
        plateau.pending = [server_round, loss, trained.sites, seconds]
        return trained

    def _add_pending(
        self, pending: list[Any], evaluation: Evaluation | None, seconds: float
    ) -> None:
        """Write the row of a round whose evaluation has come: ``pending`` is its (round,
        train loss, sites that trained, seconds), ``seconds`` what its evaluation took on top."""
        server_round, loss, sites, took = pending
        result = None if evaluation is None else evaluation.result
        evaluated = 0 if evaluation is None else evaluation.sites
        train_loss = math.nan if loss is None else float(loss)
        self._add_round(
            RoundRow.from_eval(
                int(server_round), result, train_loss, int(sites), evaluated, float(took) + seconds
            )
        )

    def _remember(self, period: int, weights: Weights, evaluation: Evaluation) -> None:
        """Keep an evaluation of ``weights`` made elsewhere, as :meth:`_evaluate` keeps its own."""
        if self._evaluations and next(iter(self._evaluations))[0] != period:
            self._evaluations.clear()
        self._evaluations[(period, digest(weights))] = evaluation

    def _validate(self, period: int, weights: Weights) -> float:
        """Federated accuracy of ``weights`` on the sites' holdouts for ``period`` (on the
        training sites' alone while a cluster's model trains)."""
        return self._accuracy(self._evaluate(period, weights))

    def _accuracy(self, evaluation: Evaluation) -> float:
        if self._train_sites is None:
            return evaluation.accuracy
        picked = [evaluation.scores[s] for s in self._train_sites if s in evaluation.scores]
        total = sum(n for _, n in picked)
        return sum(c for c, _ in picked) / total if total else math.nan

    def _evaluate(self, period: int, weights: Weights) -> Evaluation:
        """The federated evaluation of ``weights`` on ``period``'s holdouts.

        A period's holdouts do not change, so the same weights are evaluated once per period:
        the gate reuses the scores of the round that produced the candidate and of the
        champion's validation (a message wave fewer each, which a deployment pays in seconds).
        """
        key = (period, digest(weights))
        if key not in self._evaluations:
            evaluation = self.federation.evaluate(self.server_round, weights, period)
            self._remember(period, weights, evaluation)
        return self._evaluations[key]

    # ------------------------------------------------------------------ registry

    def _register(
        self,
        outcome: Outcome,
        period: int,
        trigger: str,
        reason: str,
        parent: int | None,
        key: str | None = None,
        cluster: int | None = None,
        trained: frozenset[str] | None = None,
    ) -> int:
        """The outcome as a candidate in the registry (once, even across a resume); ``key``
        defaults to the period's (one retrain a period). ``cluster``: the concept cluster it
        is trained for (``adaptation=clustered``). ``trained``: the arrays it trained, when a
        strategy trained fewer than the run's (transfer: the head)."""
        evaluation = self._evaluate(period, outcome.weights)
        scores, accuracy = evaluation.scores, outcome.validation_accuracy
        if self.fixed_rounds is not None and math.isnan(accuracy):
            accuracy = evaluation.accuracy  # a static run searches no plateau to score it
        # Lineage: the retrain's rounds that trained (aggregated some site's update) and each
        # site's training examples in them; the holdout scores are its validation.
        entry = self.registry.register(
            {k: np.asarray(v) for k, v in outcome.weights.items()},
            key=key or f"p{period}",
            trigger=trigger,
            reason=reason,
            period=period,
            parent=parent,
            rounds=outcome.trained_rounds,
            samples={str(s): n for s, n in sorted(outcome.samples.items())},
            config_hash=self.config_hash,
            metrics={"validation_accuracy": accuracy, **worst_scores(evaluation)},
            site_metrics={str(s): {"accuracy": c / n} for s, (c, n) in sorted(scores.items()) if n},
            epsilon={str(s): e for s, e in (outcome.epsilon_by_site or {}).items()},
            cluster=cluster,
            trained=self.models.trained if trained is None else sorted(trained),
        )
        return entry.version

    def _release(self, version: int, period: int, reuse: bool = False) -> bool:
        """The gate on this period's holdouts, then a promotion or a canary."""
        candidate_weights, champion_weights = self.registry.load(version), self._champion()
        candidate = self._evaluate(period, candidate_weights)
        champion = self._evaluate(period, champion_weights)
        memory = self._memory_periods(period)
        remembered: dict[str, SiteScores | None] = {"candidate": None, "champion": None}
        if memory:
            for name, weights in (("candidate", candidate_weights), ("champion", champion_weights)):
                evaluation = self.federation.evaluate(self.server_round, weights, period, memory)
                remembered[name] = evaluation.scores
        return self.lifecycle.release(
            version,
            period,
            candidate.scores,
            champion.scores,
            reuse=reuse,
            candidate_groups=_groups(candidate),
            champion_groups=_groups(champion),
            candidate_memory=remembered["candidate"],
            champion_memory=remembered["champion"],
        )

    def _memory_periods(self, period: int) -> tuple[int, ...]:
        """The earlier periods whose holdouts the gate checks for forgetting."""
        m = self.cfg.release.memory_periods
        return tuple(range(max(0, period - m), period)) if m and period > 0 else ()

    def _rehearsal(self, period: int) -> dict[int, int] | None:
        """Each site's first window of a retrain's replay buffer (``retrain.rehearsal_periods``
        earlier windows besides the period's); None without rehearsal."""
        r = self.cfg.retrain.rehearsal_periods
        if not r or period == 0:
            return None
        return {s: max(0, period - r) for s in range(self.cfg.runtime.num_clients)}

    def _champion(self) -> Weights:
        return self.registry.load(self.lifecycle.champion_version())

    # ------------------------------------------------------------------ monitoring

    def _collect(self, period: int, weights: Weights, edges: HistogramEdges) -> CollectedStats:
        """Every site's statistics for ``period``, kept in the checkpoint for replay.

        During a canary the candidate travels too, and the canary sites serve it.
        """
        canary = self.lifecycle.canary_request(period, self.registry.load)
        serving = self._serving()
        if serving is None:
            collected = self.federation.collect_stats(
                self.server_round, weights, period, edges, canary
            )
        else:
            collected = self.federation.collect_stats(
                self.server_round, weights, period, edges, canary, serving=serving
            )
        self._keep(collected)
        return collected

    def _keep(self, collected: CollectedStats) -> None:
        """Keep the period's statistics for replay: a resumed period does not ask again."""
        self.checkpoints.save_stats(collected.stats)

    def _serving(self) -> Serving | None:
        """What the statistics query carries besides the champion: nothing for one model."""
        return None

    def _add_row(self, row: PeriodRow) -> None:
        if self.epsilon is not None:
            row = replace(row, max_epsilon=max(self.epsilon.latest.values(), default=0.0))
        self.timeline.add(row)
        self.tracker.period(row, self.registry)
        self._write_page()

    def _add_round(self, row: RoundRow) -> None:
        self.report.add(row)
        self.tracker.round(row, self.epsilon.latest if self.epsilon is not None else {})
        if self.fixed_rounds is not None:  # a static run has no periods to wait for
            self._write_page()

    def _write_page(self, finished: bool = False) -> None:
        """``report.html``, for whoever keeps it open; a problem writing it is logged.

        While the run goes on, the page is rewritten at most :data:`PAGE_SHARE` of the time:
        after a rewrite that took ``t`` seconds, the next waits ``t * (1 / PAGE_SHARE - 1)``
        seconds. The last one, at the end, always happens.
        """
        start = time.perf_counter()
        if not finished and start < self._page_due:
            return
        try:
            write_report(self.run_dir, finished)
        except (OSError, ValueError) as err:
            log.warning("could not write %s: %s", self.run_dir / "report.html", err)
        end = time.perf_counter()
        self._page_due = end + (end - start) * (1 / PAGE_SHARE - 1)


def one_wave_search(cfg: RunConfig) -> bool:
    """Whether a scenario's plateau searches run in one message wave per round.

    A search decides after each round whether to go on, on that round's validation. In one
    wave, round k's validation comes with round k+1's train replies: round k+1 trains before
    the decision on round k, and is dropped (its round number used again) when the search
    stops or re-initialises there (:meth:`Controller._lagged_plateau`). That needs the train
    wave to reach the sites the evaluate wave would (the same sampling, no simulated dropout),
    and a dropped round to cost nothing that stays: not under DP-SGD (it would spend ε), not
    with a server optimizer (FedAdam, FedYogi, FedAdagrad: it would have moved its state).
    A cluster's rounds validate on its own sites and keep two waves.
    """
    r = cfg.runtime
    optimizer = str(cfg.strategy.get("_target_", "") if cfg.strategy else "").rsplit(".", 1)[-1]
    return (
        r.fraction_evaluate == r.fraction_train
        and cfg.attack.dropout == 0
        and not cfg.privacy.enabled
        and optimizer not in STATEFUL_STRATEGIES
    )


def _through(server_round: int) -> Callable[[Rejection], bool]:
    """Whether a rejection was recorded in ``server_round`` or before."""
    return lambda rejection: rejection.server_round <= server_round


def outcome_record(outcome: Outcome, version: int) -> dict[str, Any]:
    """A finished training's outcome, without its weights (the registry holds them)."""
    return {
        "version": version,
        "action": outcome.action,
        "rounds": outcome.rounds,
        "validation_accuracy": outcome.validation_accuracy,
        "epsilon_by_site": None
        if outcome.epsilon_by_site is None
        else {str(s): e for s, e in outcome.epsilon_by_site.items()},
        "trained_rounds": outcome.trained_rounds,
        "samples": {str(s): n for s, n in outcome.samples.items()},
    }


def outcome_from(record: Mapping[str, Any], weights: Weights) -> Outcome:
    """:func:`outcome_record`'s outcome again, with the registered ``weights``."""
    spent = record["epsilon_by_site"]
    return Outcome(
        weights,
        record["action"],
        int(record["rounds"]),
        float(record["validation_accuracy"]),
        epsilon_by_site=None if spent is None else {int(s): float(e) for s, e in spent.items()},
        trained_rounds=int(record["trained_rounds"]),
        samples={int(s): int(n) for s, n in record["samples"].items()},
    )


def _summed(spent: list[dict[int, float]]) -> dict[int, float]:
    """Each site's rise of cumulative ε over trainings that ran one after another: their sum
    is the rise over all of them."""
    total: dict[int, float] = {}
    for by_site in spent:
        for site, eps in by_site.items():
            total[site] = total.get(site, 0.0) + eps
    return total


def _no_data(stats: PeriodStats) -> bool:
    """Whether no site had data in the period (deployed sites with no new files)."""
    return stats.total.n == 0


def _groups(evaluation: Evaluation) -> np.ndarray | None:
    """An evaluation's confusion per group of users, when the task has groups."""
    return None if evaluation.result is None else evaluation.result.groups


def worst_scores(evaluation: Evaluation) -> dict[str, float]:
    """The lowest site accuracy and, with groups of users, the lowest group recall of a
    version's validation: what a version's metrics show beside its overall accuracy."""
    worst = {}
    accuracies = [c / n for c, n in evaluation.scores.values() if n]
    if accuracies:
        worst["worst_site_accuracy"] = min(accuracies)
    groups = _groups(evaluation)
    if groups is not None:
        recalls = group_recalls(groups)
        if np.isfinite(recalls).any():
            worst["worst_group_recall"] = float(np.nanmin(recalls))
    return worst

"""The retraining controller: monitoring periods, the drift monitor, the trigger, retrains and
the release lifecycle.

Each period the sites score the serving model on their new window and send only summable
statistics (prequential scoring: the model meets the data before anything trains on it). The
monitor's detectors read them, the trigger policy decides, with a logged reason, and a retrain
either reuses a stored model that wins on current data or fine-tunes the champion until
federated validation stops improving, re-initialising when warm starting stalls.

Every retrained model is a candidate in the run's registry (:mod:`fedretrain.registry`). The
validation gate evaluates it with the champion on every site's holdout; a candidate that passes
is promoted, or first served by a share of sites (a canary) and promoted or rolled back on
their prequential scores; a fresh champion is watched and rolled back to its parent if the
parent does better on current data.

The controller checkpoints after every completed round and period
(:mod:`fedretrain.checkpoint`); ``resume=True`` continues a killed run from its folder.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from hydra.utils import instantiate

from fedretrain.checkpoint import CheckpointStore, Plateau, RunState
from fedretrain.config import RunConfig, from_yaml
from fedretrain.deploy.stream import FolderStream
from fedretrain.flower.records import (
    CANARY_KEY,
    MONITOR_QUERY,
    SITE_ID_KEY,
    data_report,
    edges_record,
    error_summary,
    eval_result,
    instruction_config,
    site_scores,
    stats_from_record,
)
from fedretrain.flower.strategies import build_strategy
from fedretrain.flower.validated import FederationError, wait_for_nodes
from fedretrain.model_io import save_state_dict
from fedretrain.monitor.base import Detection
from fedretrain.monitor.monitor import Monitor, build_detectors
from fedretrain.monitor.private import check_stats, noise_std_for, stats_epsilon
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats
from fedretrain.monitor.trigger import TriggerPolicy
from fedretrain.registry import Registry, Status, canary_verdict, choose_canary_sites, gate
from fedretrain.registry.registry import config_hash
from fedretrain.report import RoundRow, RunReport
from fedretrain.site import model_for
from fedretrain.timeline import PeriodRow, Timeline
from fedretrain.training import EvalResult
from fedretrain.validation import DECLINE_PHASES, Rejection
from server.loop import (
    accepted_count,
    checked_replies,
    privacy_accounting,
    privacy_summary,
    trained_replies,
)

log = logging.getLogger(__name__)

Scores = dict[int, tuple[int, int]]  # site -> (correct, examples)


@dataclass(frozen=True)
class Outcome:
    """What a retrain produced: the arrays to serve and how they were obtained."""

    arrays: ArrayRecord
    action: str  # initial, warm, reinit, reuse vN, kept
    rounds: int
    validation_accuracy: float
    reused_version: int | None = None
    epsilon_by_site: dict[int, float] | None = None  # DP-SGD: what it cost each site


class Controller:
    """Runs one drift scenario on a grid; writes the run folder; resumes a killed one."""

    def __init__(
        self, grid: Grid, config_yaml: str, run_dir: Path, out: TextIO, resume: bool = False
    ) -> None:
        self.grid = grid
        self.config_yaml = config_yaml
        self.cfg: RunConfig = from_yaml(config_yaml)
        cfg = self.cfg
        random.seed(cfg.runtime.seed)  # Flower samples nodes with the global `random` module
        self.run_dir = run_dir
        self.resume = resume
        self.rounds = RunReport(run_dir, 0, out)  # per-round rows and rejections
        self.timeline = Timeline(run_dir, cfg.scenario.num_periods, out)
        if not resume:
            (run_dir / "config.yaml").write_text(config_yaml)
        self.strategy = build_strategy(cfg, self.rounds.reject)
        self.stream = instantiate(cfg.scenario.stream)
        self.schedule = instantiate(cfg.scenario.schedule)(
            num_sites=cfg.runtime.num_clients,
            num_periods=cfg.scenario.num_periods,
            seed=cfg.runtime.seed,
        )
        self.change_points = self.schedule.change_points()
        self.monitor = Monitor(
            build_detectors(
                cfg.monitor.detectors,
                cfg.monitor.arl,
                cfg.monitor.reference_periods,
                stats_noise_std=noise_std_for(cfg.privacy),
            )
        )
        self.policy = TriggerPolicy(cfg.policy, self.change_points)
        self.registry = Registry(run_dir, create=True)
        self.checkpoints = CheckpointStore(run_dir / "checkpoint")
        self.state = RunState()
        self._config_hash = config_hash(config_yaml)
        self._num_features = int(np.prod(self.stream.input_shape))
        self._last_validation = math.nan
        self._evaluations: dict[tuple[int, str], tuple[EvalResult | None, int, Scores]] = {}
        self._ledger_dir, self.epsilon = privacy_accounting(cfg, run_dir)

    @property
    def server_round(self) -> int:
        """Training rounds of the run so far, across retrains."""
        return self.state.server_round

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, object]:
        cfg = self.cfg
        replayed = self._restore() if self.resume else None
        if self.state.completed_period < 0:
            self._pace(0)
            self._initial_period(replayed)
            replayed = None
        for period in range(self.state.completed_period + 1, cfg.scenario.num_periods):
            self._pace(period)
            self._period(period, replayed)
            replayed = None

        champion = self._champion()
        if self.epsilon is not None:
            self.epsilon.plot(self.run_dir / "privacy.png")
        model = model_for(cfg, self.stream.input_shape, self.stream.num_classes)
        model.load_state_dict(champion.to_torch_state_dict())
        save_state_dict(
            model.state_dict(), self.run_dir / "model.safetensors", {"task": cfg.task.name}
        )
        versions = self.registry.versions()
        rejections = self.rounds.rejections
        data_problems = sum(r.phase.startswith("data p") for r in rejections)
        deployed = isinstance(self.stream, FolderStream)
        summary = self.timeline.finish(
            None if deployed else self.change_points,
            {
                "scenario": cfg.scenario.name,
                "policy": cfg.policy.name,
                "task": cfg.task.name,
                "strategy": str(cfg.strategy._target_),
                "clients": cfg.runtime.num_clients,
                "serving_version": self._champion_version(),
                "versions": len(versions),
                "promotions": len(self.registry.events(kind="promote")),
                "rollbacks": len(self.registry.events(kind="rollback")),
                "rejected_candidates": sum(v.status is Status.rejected for v in versions),
                "rejected_replies": sum(
                    r.phase not in DECLINE_PHASES and not r.phase.startswith("data p")
                    for r in rejections
                ),
                "declined_trainings": sum(r.phase in DECLINE_PHASES for r in rejections),
                **({"site_data_problems": data_problems} if deployed else {}),
                "run_dir": str(self.run_dir),
                **privacy_summary(self.epsilon, self.strategy),
                **_stats_privacy(cfg),
            },
        )
        self.registry.close()
        return summary

    def _initial_period(self, replayed: tuple[PeriodStats, int] | None) -> None:
        """Period 0: statistics fix the histogram edges; the first model trains to a plateau."""
        cfg = self.cfg
        start = time.perf_counter()
        initial = self._fresh_arrays(seed=cfg.runtime.seed)
        no_edges = HistogramEdges(np.zeros((self._num_features, 0)))
        stats, rejected = replayed or self._stats(0, initial, no_edges)
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
        version = self._register(outcome, 0, "initial", "initial training", parent=None)
        self.registry.promote(version, reason="initial model", period=0, key="p0-promote")
        self.policy.trained(0, initial=True)
        self.monitor.reset()
        self._add_row(_row(stats, rejected, [], True, "initial training", outcome, version, start))
        self._complete(0)

    def _period(self, period: int, replayed: tuple[PeriodStats, int] | None) -> None:
        start = time.perf_counter()
        edges = HistogramEdges(np.asarray(self.state.edges, dtype=np.float64))
        stats, rejected = replayed or self._stats(period, self._champion(), edges)
        total = stats.total
        if _no_data(stats):
            log.warning("period %d: no site has new data; nothing to monitor", period)
            self.timeline.decision({"period": period, "retrain": False, "reason": NO_DATA})
            self._add_row(
                _row(stats, rejected, [], False, NO_DATA, None, self._champion_version(), start)
            )
            self._complete(period)
            return
        plateau = self.state.plateau
        if plateau is None or plateau.period != period:  # a resumed retrain did these already
            self._watch(period)
            self._canary(period, stats)
        detections = self.monitor.update(stats)
        decision = self.policy.decide(period, total.accuracy, total.labelled, detections)
        self.timeline.decision(
            {
                "period": period,
                "retrain": decision.retrain,
                "reason": decision.reason,
                "causes": list(decision.causes),
                "stats": decision.stats,
                "detectors": [d.to_dict() for d in detections],
            }
        )
        retrained: Outcome | None = None
        if decision.retrain:
            retrained = self._retrain(period, decision.reason)
            self.policy.trained(period)
            self.monitor.reset()
        self._add_row(
            _row(
                stats,
                rejected,
                detections,
                decision.retrain,
                decision.reason,
                retrained,
                self._champion_version(),
                start,
                period in self.change_points,
            )
        )
        self._complete(period)

    def _pace(self, period: int) -> None:
        """With ``scenario.period_seconds``, wait until that long after the previous period
        started (at once if that is past, or if ``period`` already started before a resume)."""
        seconds = self.cfg.scenario.period_seconds
        started = self.state.period_started
        if started is not None and int(started[0]) == period:
            return
        if seconds > 0 and started is not None:
            wait = started[1] + seconds - time.time()
            if wait > 0:
                log.info("period %d starts in %.0f s", period, wait)
                time.sleep(wait)
        self.state.period_started = [period, time.time()]

    # ------------------------------------------------------------------ resume

    def _restore(self) -> tuple[PeriodStats, int] | None:
        """Load the checkpoint, cut the logs back to it and replay the monitor and the policy.

        Returns the in-progress period's statistics if they were kept (the sites are not asked
        again), else None.
        """
        state, arrays = self.checkpoints.load()
        self.state = state
        state.restore_random()
        self._restored_arrays = {k: _record(v) for k, v in arrays.items()}
        done, next_period = state.completed_period, state.completed_period + 1
        kept = self.checkpoints.load_stats(next_period)

        def keep(r: Rejection) -> bool:
            if r.server_round > state.server_round:
                return False
            if r.phase.startswith(("monitor p", "data p")):
                period = int(r.phase.rsplit(" p", 1)[1])
                return period <= done or (period == next_period and kept is not None)
            return True

        self.rounds.restore(state.server_round, keep)
        self.timeline.restore(done)
        if self.epsilon is not None:
            self.epsilon.restore(state.server_round)
        if done >= 0:
            self.policy.trained(0, initial=True)
            self.monitor.reset()
        rows = {row.period: row for row in self.timeline.rows}
        for period in range(1, done + 1):
            stats = self.checkpoints.load_stats(period)
            if stats is None:
                raise FederationError(f"checkpoint: statistics of period {period} are missing")
            if _no_data(stats):
                continue
            detections = self.monitor.update(stats)
            total = stats.total
            decision = self.policy.decide(period, total.accuracy, total.labelled, detections)
            if decision.retrain != rows[period].retrain:
                raise FederationError(
                    f"resume: replaying period {period} decided retrain={decision.retrain} but "
                    f"the run decided {rows[period].retrain}; the run folder is inconsistent"
                )
            if decision.retrain:
                self.policy.trained(period)
                self.monitor.reset()
        log.info("resumed after period %d, round %d", done, state.server_round)
        if kept is None:
            return None
        rejected = sum(
            r.phase == f"monitor p{next_period}" and r.node_id != 0 for r in self.rounds.rejections
        )
        return kept, rejected

    def _complete(self, period: int) -> None:
        """Checkpoint the end of ``period``."""
        self.state.completed_period = period
        self.state.plateau = None
        self._checkpoint({})

    def _checkpoint(self, arrays: dict[str, ArrayRecord]) -> None:
        self.state.capture_random()
        self.checkpoints.save(self.state, {k: _numpy(v) for k, v in arrays.items()})

    # ------------------------------------------------------------------ retraining

    def _retrain(self, period: int, reason: str) -> Outcome:
        """Reuse a stored model that wins on current data, else train to a plateau; then the
        gate, and a promotion, a canary or a rejection."""
        r = self.cfg.retrain
        champion_version = self._champion_version()
        plateau = self.state.plateau
        if plateau is None or plateau.period != period:
            self._cancel_canary(period, "superseded by a new retrain")
            serving = self._champion()
            serving_acc = self._validate(period, serving)
            reused = self._reuse(period, serving_acc) if r.reuse_stored else None
            if reused is not None and reused.reused_version is not None:
                if not self._release(reused.reused_version, period, reused):
                    return replace(reused, action=f"{reused.action}, rejected")
                return reused
            target = self.registry.get(champion_version).metrics.get("validation_accuracy")
            plateau = Plateau(period=period, action="warm", baseline=serving_acc, target=target)
            start = serving
        else:
            start = self._restored_arrays["start"]
        outcome = self._train_to_plateau(plateau, start, plateau.target)
        version = self._register(outcome, period, outcome.action, reason, champion_version)
        if not self._release(version, period, outcome):
            return replace(outcome, action=f"{outcome.action}, rejected")
        return outcome

    def _reuse(self, period: int, serving_acc: float) -> Outcome | None:
        """The stored version that does best on current data, if it is back (scores within
        ``reuse_tolerance`` of its stored accuracy) and beats the champion by the margin."""
        r = self.cfg.retrain
        champion = self._champion_version()
        candidates = [v for v in self.registry.versions() if v.version != champion]
        best: tuple[float, int, ArrayRecord] | None = None
        for stored in candidates[-r.max_stored :] if r.max_stored else []:
            stored_acc = stored.metrics.get("validation_accuracy", math.nan)
            arrays = _record(self.registry.load(stored.version))
            acc = self._validate(period, arrays)
            if acc >= stored_acc - r.reuse_tolerance and (best is None or acc > best[0]):
                best = (acc, stored.version, arrays)
        if best is None or best[0] < serving_acc + r.reuse_margin:
            return None
        acc, version, arrays = best
        log.info("period %d: reuse v%d: %.4f vs %.4f", period, version, acc, serving_acc)
        return Outcome(arrays, f"reuse v{version}", 0, acc, version)

    def _train_to_plateau(
        self, plateau: Plateau, start: ArrayRecord, target: float | None
    ) -> Outcome:
        """Federated rounds on the period's windows until validation accuracy stops improving.

        ``plateau.baseline`` is the starting model's validation accuracy on this period.
        ``target`` is the accuracy the champion reached when it was trained: a warm start still
        more than ``retrain.stall_gap`` below it after ``retrain.reinit_after`` rounds is
        abandoned for a fresh initialisation (a flipped concept is unlearnt faster from
        scratch). The best model seen, by validation accuracy, is kept. The search is
        checkpointed after every round and continues from there on resume.
        """
        r, p = self.cfg.retrain, plateau
        if self.epsilon is not None and p.epsilon_mark is None:
            p.epsilon_mark = {str(k): v for k, v in self.epsilon.mark().items()}
        restored = self.resume and self.state.plateau is p
        arrays = self._restored_arrays if restored else {}
        current = arrays.get("current", start)
        best = arrays.get("best", start)
        if not p.best_action:
            p.best_action = p.action
        check = r.reinit_after if target is not None else None
        while p.rounds < r.max_rounds and p.since_best < r.patience:
            current = self._train_round(p.period, current)
            p.rounds += 1
            if self._last_validation > p.best_acc + r.min_delta:
                p.best_acc, best, p.best_action = self._last_validation, current, p.action
                p.since_best = 0
            else:
                p.since_best += 1
            if p.action == "warm" and p.rounds == check and p.best_acc < target - r.stall_gap:  # type: ignore[operator]
                current = self._fresh_arrays(self._reinit_seed(p.period))
                p.action, p.since_best = "reinit", 0
            self.state.plateau = p
            self._checkpoint({"start": start, "current": current, "best": best})
        spent = None
        if self.epsilon is not None and p.epsilon_mark is not None:
            mark = {int(k): v for k, v in p.epsilon_mark.items()}
            spent = self.epsilon.spent_since(mark)
        return Outcome(best, p.best_action, p.rounds, p.best_acc, epsilon_by_site=spent)

    def _reinit_seed(self, period: int) -> int:
        return int(np.random.SeedSequence([self.cfg.runtime.seed, 9, period]).generate_state(1)[0])

    def _train_round(self, period: int, arrays: ArrayRecord) -> ArrayRecord:
        """One federated training round on ``period``'s windows, logged in metrics.csv."""
        self.state.server_round += 1
        server_round = self.state.server_round
        started = time.perf_counter()
        config = instruction_config(
            self.config_yaml, self.cfg.retrain.max_rounds, period, self._ledger_dir
        )
        messages = self.strategy.configure_train(server_round, arrays, config, self.grid)
        timeout = self.cfg.validation.reply_timeout_s
        replies = trained_replies(
            self.grid.send_and_receive(messages, timeout=timeout),
            self.rounds,
            server_round,
            self.epsilon,
            period,
        )
        new_arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        trained = accepted_count(replies, self.rounds, server_round, "train")
        loss = float(metrics["train-loss"]) if metrics else math.nan  # type: ignore[arg-type]
        result = new_arrays if new_arrays is not None else arrays
        evaluation, evaluated, _ = self._evaluate(period, result)
        seconds = time.perf_counter() - started
        self.rounds.add(
            RoundRow.from_eval(server_round, evaluation, loss, trained, evaluated, seconds)
        )
        self._last_validation = _accuracy(evaluation)
        return result

    def _validate(self, period: int, arrays: ArrayRecord) -> float:
        """Federated accuracy of ``arrays`` on the sites' holdouts for ``period``."""
        return _accuracy(self._evaluate(period, arrays)[0])

    def _evaluate(self, period: int, arrays: ArrayRecord) -> tuple[EvalResult | None, int, Scores]:
        """The summed evaluation on the sites' holdouts, how many sites counted, and each
        site's (correct, examples).

        A period's holdouts do not change, so the same weights are evaluated once per period:
        the gate reuses the scores of the round that produced the candidate and of the
        champion's validation (a message wave fewer each, which a deployment pays in seconds).
        """
        key = (period, _digest(arrays))
        if key not in self._evaluations:
            if self._evaluations and next(iter(self._evaluations))[0] != period:
                self._evaluations.clear()
            self._evaluations[key] = self._evaluate_now(period, arrays)
        return self._evaluations[key]

    def _evaluate_now(
        self, period: int, arrays: ArrayRecord
    ) -> tuple[EvalResult | None, int, Scores]:
        config = instruction_config(self.config_yaml, self.cfg.retrain.max_rounds, period)
        messages = self.strategy.configure_evaluate(self.server_round, arrays, config, self.grid)
        timeout = self.cfg.validation.reply_timeout_s
        replies = checked_replies(self.grid.send_and_receive(messages, timeout=timeout), "evaluate")
        metrics = self.strategy.aggregate_evaluate(self.server_round, replies)
        evaluated = accepted_count(replies, self.rounds, self.server_round, "evaluate")
        result = eval_result(metrics) if metrics is not None else None
        return result, evaluated, site_scores(replies)

    # ------------------------------------------------------------------ lifecycle

    def _register(
        self, outcome: Outcome, period: int, trigger: str, reason: str, parent: int | None
    ) -> int:
        """The outcome as a candidate in the registry (once, even across a resume)."""
        _, _, scores = self._evaluate(period, outcome.arrays)
        entry = self.registry.register(
            _numpy(outcome.arrays),
            key=f"p{period}",
            trigger=trigger,
            reason=reason,
            period=period,
            parent=parent,
            rounds=outcome.rounds,
            samples={str(s): n for s, (_, n) in scores.items()},
            config_hash=self._config_hash,
            metrics={"validation_accuracy": outcome.validation_accuracy},
            site_metrics={str(s): {"accuracy": c / n} for s, (c, n) in scores.items() if n},
            epsilon={str(s): e for s, e in (outcome.epsilon_by_site or {}).items()},
        )
        return entry.version

    def _release(self, version: int, period: int, outcome: Outcome) -> bool:
        """The gate, then a promotion (watched) or a canary; False if the gate rejected it."""
        release = self.cfg.release
        candidate = _record(self.registry.load(version))
        _, _, cand = self._evaluate(period, candidate)
        _, _, champ = self._evaluate(period, self._champion())
        decision = gate(
            cand,
            champ,
            release.global_margin,
            release.site_margin,
            min_site_total=release.min_site_examples,
        )
        self.registry.record(
            "gate",
            period=period,
            version=version,
            payload=decision.to_dict(),
            key=f"p{period}-gate",
        )
        if not decision.promote:
            self.registry.reject(
                version, reason=decision.reason, period=period, key=f"p{period}-reject"
            )
            return False
        if release.canary_fraction > 0:
            sites = choose_canary_sites(
                sorted(cand), release.canary_fraction, [self.cfg.runtime.seed, period]
            )
            self.registry.set_alias("candidate", version, reason="canary", period=period)
            self.state.canary = {
                "version": version,
                "sites": [int(s) for s in sites],
                "start": period + 1,
                "before": None,
                "during": {},
            }
            return True
        self._promote(version, period, decision.reason)
        return True

    def _promote(self, version: int, period: int, reason: str) -> None:
        previous = self._champion_version()
        self.registry.promote(version, reason=reason, period=period, key=f"p{period}-promote")
        if self.cfg.release.watch_periods > 0 and previous != version:
            self.state.watch = {
                "version": version,
                "parent": previous,
                "until": period + self.cfg.release.watch_periods,
            }

    def _watch(self, period: int) -> None:
        """A fresh champion that does worse than its parent on current data is rolled back."""
        watch = self.state.watch
        if watch is None:
            return
        if self._champion_version() != watch["version"] or period > watch["until"]:
            self.state.watch = None
            return
        champion_acc = self._validate(period, self._champion())
        parent_acc = self._validate(period, _record(self.registry.load(watch["parent"])))
        payload = {"champion": champion_acc, "parent": parent_acc}
        self.registry.record(
            "watch",
            period=period,
            version=watch["version"],
            payload=payload,
            key=f"p{period}-watch",
        )
        if parent_acc > champion_acc + self.cfg.release.rollback_margin:
            reason = (
                f"fresh champion v{watch['version']} scores {champion_acc:.4f} on period "
                f"{period}, its parent v{watch['parent']} {parent_acc:.4f} (rollback_margin "
                f"{self.cfg.release.rollback_margin})"
            )
            self.registry.rollback(
                to=watch["parent"], reason=reason, period=period, key=f"p{period}-rollback"
            )
            self.state.watch = None
        elif period >= watch["until"]:
            self.state.watch = None

    def _canary(self, period: int, stats: PeriodStats) -> None:
        """Score the canary from this period's prequential statistics; decide at its end."""
        canary = self.state.canary
        if canary is None:
            return
        scores = _prequential(stats)
        if period < canary["start"]:
            return
        if canary["before"] is None:  # the period the gate passed: the champion served all
            previous = self.checkpoints.load_stats(canary["start"] - 1)
            canary["before"] = {str(s): v for s, v in _prequential(previous).items()}  # type: ignore[arg-type]
        during = canary["during"]
        for site, (correct, total) in scores.items():
            c, n = during.get(str(site), (0, 0))
            during[str(site)] = (c + correct, n + total)
        if period < canary["start"] + self.cfg.release.canary_periods - 1:
            return
        verdict = canary_verdict(
            [str(s) for s in canary["sites"]],
            canary["before"],
            during,
            margin=self.cfg.release.canary_margin,
            min_samples=1,
        )
        version = canary["version"]
        self.registry.record(
            "canary",
            period=period,
            version=version,
            payload=verdict.to_dict(),
            key=f"p{period}-canary",
        )
        self.state.canary = None
        if verdict.action.value == "promote":
            self._promote(version, period, f"canary: {verdict.reason}")
        else:
            self.registry.reject(
                version,
                reason=f"canary: {verdict.reason}",
                period=period,
                status=Status.rolled_back,
                key=f"p{period}-canary-reject",
            )

    def _cancel_canary(self, period: int, reason: str) -> None:
        if self.state.canary is not None:
            version = self.state.canary["version"]
            self.registry.reject(version, reason=reason, period=period, key=f"p{period}-cancel")
            self.state.canary = None

    # ------------------------------------------------------------------ monitoring

    def _stats(
        self, period: int, arrays: ArrayRecord, edges: HistogramEdges
    ) -> tuple[PeriodStats, int]:
        """Every site's statistics for ``period``, kept in the checkpoint for replay."""
        stats, rejected = self._query_stats(period, arrays, edges)
        self.checkpoints.save_stats(stats)
        return stats, rejected

    def _query_stats(
        self, period: int, arrays: ArrayRecord, edges: HistogramEdges
    ) -> tuple[PeriodStats, int]:
        """Every site's statistics for ``period``; malformed ones are rejected and recorded.

        During a canary the candidate travels too, and the canary sites serve it.
        """
        cfg = self.cfg
        nodes = wait_for_nodes(
            self.grid, cfg.runtime.num_clients, cfg.validation.node_wait_timeout_s
        )
        config = instruction_config(self.config_yaml, cfg.retrain.max_rounds, period)
        content = RecordDict({"arrays": arrays, "config": config, "edges": edges_record(edges)})
        canary = self.state.canary
        if canary is not None and period >= canary["start"]:
            content["candidate"] = _record(self.registry.load(canary["version"]))
            config[CANARY_KEY] = [int(s) for s in canary["sites"]]
        messages = [
            Message(content=content, message_type=MONITOR_QUERY, dst_node_id=n) for n in nodes
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=cfg.validation.reply_timeout_s))
        sites: dict[int, WindowStats] = {}
        rejected = 0
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            reason = None
            if reply.has_error():
                reason = f"site failed: {error_summary(reply.error.reason)}"
            else:
                try:
                    stats = stats_from_record(reply.content.array_records["stats"])
                    site = int(reply.content.metric_records["site"][SITE_ID_KEY])  # type: ignore[arg-type]
                    reason = check_stats(
                        stats, self._num_features, edges.bins, self.stream.num_classes, cfg.privacy
                    )
                except (KeyError, ValueError, TypeError) as err:
                    reason = f"unreadable statistics: {err}"
            if reason is not None:
                self.rounds.reject(Rejection(self.server_round, f"monitor p{period}", node, reason))
                rejected += 1
                continue
            sites[site] = stats
            self._record_data_report(period, node, site, data_report(reply))
        if not sites:
            raise FederationError(f"no site sent valid statistics for period {period}")
        # A deployed site with no new files this period has nothing to report; a period with
        # no data anywhere keeps the empty reports (see _period).
        with_data = {s: w for s, w in sites.items() if w.n > 0}
        return PeriodStats(period, dict(sorted((with_data or sites).items()))), rejected

    def _record_data_report(
        self, period: int, node: int, site: int, report: dict[str, Any] | None
    ) -> None:
        """A deployed site's files quarantined and rows dropped this period, in
        rejections.csv (phase ``data pN``): the site goes on with the rest of its data."""
        if not report:
            return
        problems = [f"site {site}: quarantined {entry}" for entry in report.get("quarantined", [])]
        if report.get("dropped_rows"):
            counts = ", ".join(
                f"{k.removeprefix('dropped.')}={v}"
                for k, v in sorted(report.items())
                if k.startswith("dropped.")
            )
            problems.append(f"site {site}: dropped {report['dropped_rows']} rows ({counts})")
        for problem in problems:
            log.warning("period %d: %s", period, problem)
            self.rounds.reject(Rejection(self.server_round, f"data p{period}", node, problem))

    # ------------------------------------------------------------------ helpers

    def _champion_version(self) -> int:
        champion = self.registry.champion()
        if champion is None:
            raise FederationError("the registry has no champion")
        return champion.version

    def _champion(self) -> ArrayRecord:
        return _record(self.registry.load(self._champion_version()))

    def _fresh_arrays(self, seed: int) -> ArrayRecord:
        model = model_for(self.cfg, self.stream.input_shape, self.stream.num_classes, seed=seed)
        return ArrayRecord(model.state_dict())

    def _add_row(self, row: PeriodRow) -> None:
        if self.epsilon is not None:
            row = replace(row, max_epsilon=max(self.epsilon.latest.values(), default=0.0))
        self.timeline.add(row)


def _stats_privacy(cfg: RunConfig) -> dict[str, object]:
    """The ε of the noisy monitoring statistics (one release per site and period), if any."""
    epsilon = stats_epsilon(cfg.privacy, cfg.scenario.num_periods)
    return {} if epsilon is None else {"stats_epsilon": epsilon}


NO_DATA = "no new data at any site"


def _no_data(stats: PeriodStats) -> bool:
    """Whether no site had data in the period (deployed sites with no new files)."""
    return stats.total.n == 0


def _prequential(stats: PeriodStats | None) -> Scores:
    """Each site's (correct, labelled) under the model it served."""
    if stats is None:
        return {}
    scores = {}
    for site, window in stats.sites.items():  # private statistics are noisy: keep them counts
        total = max(int(round(float(window.confusion.sum()))), 0)
        correct = min(max(int(round(float(np.trace(window.confusion)))), 0), total)
        scores[site] = (correct, total)
    return scores


def _digest(arrays: ArrayRecord) -> str:
    """A fingerprint of the weights: names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name, array in arrays.items():
        value = array.numpy()
        h.update(f"{name}:{value.dtype}:{value.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def _record(arrays: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _accuracy(evaluation: EvalResult | None) -> float:
    if evaluation is None or not evaluation.num_examples:
        return math.nan
    return float(np.trace(evaluation.confusion) / evaluation.num_examples)


def _row(
    stats: PeriodStats,
    rejected: int,
    detections: list[Detection],
    retrain: bool,
    reason: str,
    outcome: Outcome | None,
    version: int,
    started: float,
    change_point: bool = False,
) -> PeriodRow:
    total = stats.total
    alarms = [d for d in detections if d.drifted]
    return PeriodRow(
        period=stats.period,
        accuracy=total.accuracy,
        mean_loss=total.mean_loss,
        mean_confidence=total.mean_confidence,
        samples=total.n,
        sites=len(stats.sites),
        rejected=rejected,
        change_point=change_point,
        alarms=";".join(d.test for d in alarms),
        alarm_sites=";".join(str(s) for s in sorted({s for d in alarms for s in d.sites})),
        retrain=retrain,
        reason=reason,
        action=outcome.action if outcome else "serve",
        rounds=outcome.rounds if outcome else 0,
        serving_version=version,
        validation_accuracy=outcome.validation_accuracy if outcome else math.nan,
        seconds=round(time.perf_counter() - started, 3),
    )


def run_retraining(
    grid: Grid, config_yaml: str, run_dir: Path, out: TextIO = sys.stdout, resume: bool = False
) -> dict[str, object]:
    """Run the config's drift scenario on ``grid``; write the run folder; return the summary."""
    return Controller(grid, config_yaml, run_dir, out, resume).run()

"""The retraining controller: monitoring periods, the drift monitor, the trigger and retrains.

Each period the sites score the serving model on their new window and send only summable
statistics (prequential scoring: the model meets the data before anything trains on it). The
monitor's detectors read them, the trigger policy decides, with a logged reason, and a retrain
either reuses a stored model that wins on current data or fine-tunes the serving model until
federated validation stops improving, re-initialising when warm starting stalls.

The configured Flower strategy samples sites and aggregates their replies, as in the static run.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from hydra.utils import instantiate

from fedretrain.config import RunConfig, from_yaml
from fedretrain.flower.records import (
    MONITOR_QUERY,
    edges_record,
    error_summary,
    eval_result,
    instruction_config,
    stats_from_record,
)
from fedretrain.flower.strategies import build_strategy
from fedretrain.flower.validated import FederationError, wait_for_nodes
from fedretrain.model_io import save_state_dict
from fedretrain.model_store import ModelStore, StoredModel
from fedretrain.monitor.base import Detection
from fedretrain.monitor.monitor import Monitor, build_detectors
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats, stats_problem
from fedretrain.monitor.trigger import TriggerPolicy
from fedretrain.report import RoundRow, RunReport
from fedretrain.site import model_for
from fedretrain.timeline import PeriodRow, Timeline
from fedretrain.training import EvalResult
from fedretrain.validation import Rejection
from server.loop import (
    accepted_count,
    checked_replies,
    privacy_accounting,
    privacy_summary,
    trained_replies,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a retrain produced: the arrays to serve and how they were obtained."""

    arrays: ArrayRecord
    action: str  # warm, reinit, reuse vN, kept
    rounds: int
    validation_accuracy: float
    reused_version: int | None = None
    epsilon_by_site: dict[int, float] | None = None  # DP-SGD: what it cost each site


class Controller:
    """Runs one drift scenario on a grid; writes the run folder."""

    def __init__(self, grid: Grid, config_yaml: str, run_dir: Path, out: TextIO) -> None:
        self.grid = grid
        self.config_yaml = config_yaml
        self.cfg: RunConfig = from_yaml(config_yaml)
        cfg = self.cfg
        random.seed(cfg.runtime.seed)  # Flower samples nodes with the global `random` module
        self.run_dir = run_dir
        self.rounds = RunReport(run_dir, 0, out)  # per-round rows and rejections
        self.timeline = Timeline(run_dir, cfg.scenario.num_periods, out)
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
            build_detectors(cfg.monitor.detectors, cfg.monitor.arl, cfg.monitor.reference_periods)
        )
        self.policy = TriggerPolicy(cfg.policy, self.change_points)
        self.store = ModelStore(run_dir / "models", cfg.retrain.max_stored)
        self.server_round = 0  # counts every training round of the run, across retrains
        self._num_features = int(np.prod(self.stream.input_shape))
        self._last_validation = math.nan
        self._ledger_dir, self.epsilon = privacy_accounting(cfg, run_dir)

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, object]:
        cfg = self.cfg
        initial = self._fresh_arrays(seed=cfg.runtime.seed)
        start = time.perf_counter()
        no_edges = HistogramEdges(np.zeros((self._num_features, 0)))
        stats, rejected = self._query_stats(0, initial, no_edges)
        total = stats.total
        edges = HistogramEdges.from_moments(
            total.n, total.x_sum, total.x_sq_sum, cfg.monitor.histogram_bins
        )
        outcome = self._train_to_plateau(0, initial, baseline=-1.0, target=None)
        serving = outcome.arrays
        version = self._store(serving, None, 0, "initial", outcome, "initial training").version
        self.policy.trained(0, initial=True)
        self.monitor.reset()
        self._add_row(_row(stats, rejected, [], True, "initial training", outcome, version, start))
        for period in range(1, cfg.scenario.num_periods):
            start = time.perf_counter()
            stats, rejected = self._query_stats(period, serving, edges)
            total = stats.total
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
                retrained = self._retrain(period, serving, version)
                if retrained.reused_version is not None:
                    version = retrained.reused_version
                elif retrained.action != "kept":
                    parent = version
                    entry = self._store(
                        retrained.arrays,
                        parent,
                        period,
                        retrained.action,
                        retrained,
                        decision.reason,
                    )
                    version = entry.version
                serving = retrained.arrays
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
                    version,
                    start,
                    period in self.change_points,
                )
            )

        if self.epsilon is not None:
            self.epsilon.plot(self.run_dir / "privacy.png")
        model = model_for(cfg, self.stream.input_shape, self.stream.num_classes)
        model.load_state_dict(serving.to_torch_state_dict())
        save_state_dict(
            model.state_dict(), self.run_dir / "model.safetensors", {"task": cfg.task.name}
        )
        return self.timeline.finish(
            self.change_points,
            {
                "scenario": cfg.scenario.name,
                "policy": cfg.policy.name,
                "task": cfg.task.name,
                "strategy": str(cfg.strategy._target_),
                "clients": cfg.runtime.num_clients,
                "serving_version": version,
                "versions": len(self.store.entries),
                "rejected_replies": len(self.rounds.rejections),
                "run_dir": str(self.run_dir),
                **privacy_summary(self.epsilon, self.strategy),
            },
        )

    def _add_row(self, row: PeriodRow) -> None:
        if self.epsilon is not None:
            row = replace(row, max_epsilon=max(self.epsilon.latest.values(), default=0.0))
        self.timeline.add(row)

    # ------------------------------------------------------------------ retraining

    def _retrain(self, period: int, serving: ArrayRecord, version: int) -> Outcome:
        """Reuse a stored model that wins on current data, else train to a plateau."""
        r = self.cfg.retrain
        serving_acc = self._validate(period, serving)
        if r.reuse_stored:
            best: tuple[float, int, dict[str, np.ndarray]] | None = None
            for entry, arrays in self.store.reusable(exclude=version):
                acc = self._validate(period, _record(arrays))
                # Its concept is back only if it scores as it did when it was stored.
                back = acc >= entry.validation_accuracy - r.reuse_tolerance
                if back and (best is None or acc > best[0]):
                    best = (acc, entry.version, arrays)
            if best is not None and best[0] >= serving_acc + r.reuse_margin:
                acc, reused, arrays = best
                log.info("period %d: reuse v%d: %.4f vs %.4f", period, reused, acc, serving_acc)
                return Outcome(_record(arrays), f"reuse v{reused}", 0, acc, reused)
        target = self.store.entries[version - 1].validation_accuracy
        return self._train_to_plateau(period, serving, serving_acc, target)

    def _train_to_plateau(
        self, period: int, start: ArrayRecord, baseline: float, target: float | None
    ) -> Outcome:
        """Federated rounds on ``period``'s windows until validation accuracy stops improving.

        ``baseline`` is the starting model's validation accuracy on this period. ``target`` is
        the accuracy the serving model reached when it was trained: a warm start still more
        than ``retrain.stall_gap`` below it after ``retrain.reinit_after`` rounds is abandoned
        for a fresh initialisation (a flipped concept is unlearnt faster from scratch). The
        best model seen, by validation accuracy, is kept.
        """
        if self.epsilon is None:
            return self._plateau(period, start, baseline, target)
        mark = self.epsilon.mark()
        outcome = self._plateau(period, start, baseline, target)
        return replace(outcome, epsilon_by_site=self.epsilon.spent_since(mark))

    def _plateau(
        self, period: int, start: ArrayRecord, baseline: float, target: float | None
    ) -> Outcome:
        r = self.cfg.retrain
        check = r.reinit_after if target is not None else None
        action = "warm" if period > 0 else "initial"
        best_acc, best_arrays, best_action = -1.0, start, action
        current, since_best, rounds = start, 0, 0
        while rounds < r.max_rounds:
            current = self._train_round(period, current)
            rounds += 1
            if self._last_validation > best_acc + r.min_delta:
                best_acc, best_arrays, best_action = self._last_validation, current, action
                since_best = 0
            else:
                since_best += 1
            if action == "warm" and rounds == check and best_acc < target - r.stall_gap:  # type: ignore[operator]
                current, action, since_best = (
                    self._fresh_arrays(self._reinit_seed(period)),
                    "reinit",
                    0,
                )
                continue
            if since_best >= r.patience:
                break
        if period > 0 and best_acc <= baseline:
            return Outcome(start, "kept", rounds, baseline)  # nothing beat the serving model
        return Outcome(best_arrays, best_action, rounds, best_acc)

    def _reinit_seed(self, period: int) -> int:
        return int(np.random.SeedSequence([self.cfg.runtime.seed, 9, period]).generate_state(1)[0])

    def _train_round(self, period: int, arrays: ArrayRecord) -> ArrayRecord:
        """One federated training round on ``period``'s windows, logged in metrics.csv."""
        self.server_round += 1
        started = time.perf_counter()
        config = instruction_config(
            self.config_yaml, self.cfg.retrain.max_rounds, period, self._ledger_dir
        )
        messages = self.strategy.configure_train(self.server_round, arrays, config, self.grid)
        timeout = self.cfg.validation.reply_timeout_s
        replies = trained_replies(
            self.grid.send_and_receive(messages, timeout=timeout),
            self.rounds,
            self.server_round,
            self.epsilon,
            period,
        )
        new_arrays, metrics = self.strategy.aggregate_train(self.server_round, replies)
        trained = accepted_count(replies, self.rounds, self.server_round, "train")
        loss = float(metrics["train-loss"]) if metrics else math.nan  # type: ignore[arg-type]
        result = new_arrays if new_arrays is not None else arrays
        evaluation, evaluated = self._evaluate(period, result)
        seconds = time.perf_counter() - started
        self.rounds.add(
            RoundRow.from_eval(self.server_round, evaluation, loss, trained, evaluated, seconds)
        )
        self._last_validation = _accuracy(evaluation)
        return result

    def _validate(self, period: int, arrays: ArrayRecord) -> float:
        """Federated accuracy of ``arrays`` on the sites' holdouts for ``period``."""
        return _accuracy(self._evaluate(period, arrays)[0])

    def _evaluate(self, period: int, arrays: ArrayRecord) -> tuple[EvalResult | None, int]:
        config = instruction_config(self.config_yaml, self.cfg.retrain.max_rounds, period)
        messages = self.strategy.configure_evaluate(self.server_round, arrays, config, self.grid)
        timeout = self.cfg.validation.reply_timeout_s
        replies = checked_replies(self.grid.send_and_receive(messages, timeout=timeout), "evaluate")
        metrics = self.strategy.aggregate_evaluate(self.server_round, replies)
        evaluated = accepted_count(replies, self.rounds, self.server_round, "evaluate")
        return (eval_result(metrics) if metrics is not None else None), evaluated

    # ------------------------------------------------------------------ monitoring

    def _query_stats(
        self, period: int, arrays: ArrayRecord, edges: HistogramEdges
    ) -> tuple[PeriodStats, int]:
        """Every site's statistics for ``period``; malformed ones are rejected and recorded."""
        cfg = self.cfg
        nodes = wait_for_nodes(
            self.grid, cfg.runtime.num_clients, cfg.validation.node_wait_timeout_s
        )
        content = RecordDict(
            {
                "arrays": arrays,
                "config": instruction_config(self.config_yaml, cfg.retrain.max_rounds, period),
                "edges": edges_record(edges),
            }
        )
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
                    reason = stats_problem(
                        stats, self._num_features, edges.bins, self.stream.num_classes
                    )
                except (KeyError, ValueError, TypeError) as err:
                    reason = f"unreadable statistics: {err}"
            if reason is not None:
                self.rounds.reject(Rejection(self.server_round, f"monitor p{period}", node, reason))
                rejected += 1
                continue
            sites[node] = stats
        if not sites:
            raise FederationError(f"no site sent valid statistics for period {period}")
        return PeriodStats(period, sites), rejected

    # ------------------------------------------------------------------ helpers

    def _fresh_arrays(self, seed: int) -> ArrayRecord:
        model = model_for(self.cfg, self.stream.input_shape, self.stream.num_classes, seed=seed)
        return ArrayRecord(model.state_dict())

    def _store(
        self,
        arrays: ArrayRecord,
        parent: int | None,
        period: int,
        action: str,
        outcome: Outcome,
        reason: str,
    ) -> StoredModel:
        return self.store.add(
            {k: v.numpy() for k, v in arrays.items()},
            parent=parent,
            period=period,
            action=action,
            rounds=outcome.rounds,
            validation_accuracy=outcome.validation_accuracy,
            reason=reason,
            epsilon_by_site=outcome.epsilon_by_site,
        )


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
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
    grid: Grid, config_yaml: str, run_dir: Path, out: TextIO = sys.stdout
) -> dict[str, object]:
    """Run the config's drift scenario on ``grid``; write the run folder; return the summary."""
    return Controller(grid, config_yaml, run_dir, out).run()

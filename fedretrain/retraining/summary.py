"""What a run's rows and summary say: a period's timeline row, the registry's facts."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from fedretrain.config import RunConfig
from fedretrain.registry import Registry, Status
from fedretrain.report import RoundRow
from fedretrain.retraining.drift_watch import Observation
from fedretrain.retraining.outcome import Outcome
from fedretrain.retraining.port import CollectedStats
from fedretrain.timeline import PeriodRow
from fedretrain.validation import DECLINE_PHASES, Rejection


def run_facts(
    cfg: RunConfig,
    registry: Registry,
    rejections: list[Rejection],
    run_dir: Path,
    *,
    deployed: bool,
    monitored: bool,
) -> dict[str, object]:
    """The summary's entries that come from the config, the registry and the rejections."""
    versions = registry.versions()
    champion = registry.champion()
    facts: dict[str, object] = {
        **({"scenario": cfg.scenario.name, "policy": cfg.policy.name} if monitored else {}),
        "task": cfg.task.name,
        "strategy": str(cfg.strategy._target_),
        "clients": cfg.runtime.num_clients,
        "serving_version": None if champion is None else champion.version,
        "versions": len(versions),
    }
    if monitored:
        data_problems = sum(r.phase.startswith("data p") for r in rejections)
        facts |= {
            "promotions": len(registry.events(kind="promote")),
            "rollbacks": len(registry.events(kind="rollback")),
            "rejected_candidates": sum(v.status is Status.rejected for v in versions),
            "rejected_replies": sum(
                r.phase not in DECLINE_PHASES and not r.phase.startswith("data p")
                for r in rejections
            ),
            "declined_trainings": sum(r.phase in DECLINE_PHASES for r in rejections),
            **({"site_data_problems": data_problems} if deployed else {}),
        }
    facts["run_dir"] = str(run_dir)
    return facts


def retrain_cost(
    rounds: Sequence[RoundRow], initial_rounds: int, model_bytes: int, ahead: int = 0
) -> dict[str, object]:
    """What the run's retraining cost beyond its initial training (issue 17, item 5): the
    site-rounds (one site training in one round), and the model bytes those moved (the
    weights sent to each site that trained and its update back). Rounds
    ``1..initial_rounds`` are period 0's; ``ahead`` adds the site-rounds of retrain rounds
    trained ahead of a decision and dropped (one wave per round), which have no row.

    >>> from fedretrain.report import RoundRow
    >>> rows = [RoundRow(r, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, n, 4, 40, 0.1)
    ...         for r, n in ((1, 4), (2, 4), (3, 2), (4, 0))]
    >>> retrain_cost(rows, initial_rounds=2, model_bytes=1000)["retrain_site_rounds"]
    2
    """
    site_rounds = sum(r.train_clients for r in rounds if r.round > initial_rounds) + ahead
    moved = 2 * model_bytes * site_rounds
    return {
        "model_bytes": model_bytes,
        "retrain_site_rounds": site_rounds,
        "retrain_bytes": moved,
        "retrain_megabytes": moved / 1e6,
    }


def period_row(
    collected: CollectedStats,
    observation: Observation | None,
    retrain: bool,
    reason: str,
    outcome: Outcome | None,
    version: int,
    started: float,
) -> PeriodRow:
    """A period's ``timeline.csv`` row: what the serving model scored on the period's window
    (prequentially), what the monitor and the policy said, and what the retrain did."""
    stats = collected.stats
    total = stats.total
    alarms = [d for d in observation.detections if d.drifted] if observation else []
    return PeriodRow(
        period=stats.period,
        accuracy=total.accuracy,
        mean_loss=total.mean_loss,
        mean_confidence=total.mean_confidence,
        samples=total.n,
        sites=len(stats.sites),
        rejected=collected.rejected,
        change_point=False,
        alarms=";".join(d.test for d in alarms),
        alarm_sites=";".join(
            str(s) for s in sorted(observation.alarm_sites if observation else ())
        ),
        retrain=retrain,
        reason=reason,
        action=outcome.action if outcome else "serve",
        rounds=outcome.rounds if outcome else 0,
        serving_version=version,
        validation_accuracy=outcome.validation_accuracy if outcome else math.nan,
        seconds=round(time.perf_counter() - started, 3),
    )

"""Resuming a killed run: its logs cut back to the checkpoint, its drift watch replayed.

A checkpoint holds the controller's position (:class:`fedretrain.checkpoint.RunState`) but no
pickled monitor: the monitor and the trigger policy are rebuilt by feeding them the kept
statistics of every completed period again, through the same
:meth:`~fedretrain.retraining.drift_watch.DriftWatch.observe` the run used. A replay that
decides otherwise than the run did means the folder is inconsistent, and resume stops.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from fedretrain.checkpoint import (
    STATE_FILE,
    CheckpointError,
    CheckpointStore,
    RunState,
    read_checkpoint,
)
from fedretrain.errors import FederationError
from fedretrain.monitor.base import Seed
from fedretrain.monitor.stats import PeriodStats
from fedretrain.monitor.windows import policy_fired
from fedretrain.privacy.ledger import LedgerFormatError, PrivacyLedger
from fedretrain.privacy.tracking import EpsilonTracker
from fedretrain.registry import Registry, RegistryError
from fedretrain.report import RunReport
from fedretrain.retraining.drift_watch import DriftWatch
from fedretrain.retraining.outcome import released
from fedretrain.retraining.port import CollectedStats
from fedretrain.timeline import PeriodRow, Timeline
from fedretrain.validation import Rejection


def damage(run_dir: Path, ledger_dir: Path | None = None) -> list[str]:
    """What keeps the run in ``run_dir`` from resuming safely, in words; empty if nothing.

    Checked before any site is asked to do anything (a DP site pays for every round), and
    without creating, repairing or writing anything (but for the upgrade of an older registry
    schema, one transaction that cannot damage it): the registry opens as it is and every
    version's model file matches its sha256; the checkpoint reads (format, version, its
    arrays); every privacy ledger in the run folder (and in ``ledger_dir``, the config's
    ``privacy.ledger_dir``) passes its checksum and consistency checks. A damaged file is left
    exactly as found, for a recovery tool.
    """
    problems = []
    try:
        with Registry(run_dir) as registry:
            problems += [f"registry: {p}" for p in registry.check_invariants()]
    except (RegistryError, sqlite3.DatabaseError) as err:
        problems.append(f"the registry cannot be read: {err}")
    if (run_dir / "checkpoint" / STATE_FILE).exists():
        try:
            read_checkpoint(run_dir / "checkpoint")
        except CheckpointError as err:
            problems.append(f"checkpoint: {err}")
    folders = {run_dir / "privacy", *([ledger_dir] if ledger_dir is not None else [])}
    for folder in sorted(folders):
        for path in sorted(folder.glob("site-*.json")):
            try:
                PrivacyLedger.load(path)
            except LedgerFormatError as err:
                problems.append(f"privacy ledger: {err}")
    return problems


def check_resumable(run_dir: Path, ledger_dir: Path | None = None) -> None:
    """Raise :class:`FederationError` naming every problem :func:`damage` finds."""
    problems = damage(run_dir, ledger_dir)
    if problems:
        raise FederationError(
            f"{run_dir} cannot be resumed, and nothing was changed: "
            + "; ".join(problems)
            + f". `fedretrain models check {run_dir}` says what the registry still holds; "
            "restore the damaged files from a backup, or start a new run"
        )


def cut_logs(
    checkpoints: CheckpointStore,
    state: RunState,
    report: RunReport,
    timeline: Timeline,
    epsilon: EpsilonTracker | None,
) -> CollectedStats | None:
    """Cut the run's logs back to ``state``; the in-progress period's statistics, if kept.

    Rows written after the checkpoint go (they are written again as the run goes on), except
    the monitoring rejections of a period whose statistics were kept: the sites are not asked
    again, so those rejections stand.
    """
    done, next_period = state.completed_period, state.completed_period + 1
    kept = checkpoints.load_stats(next_period)
    # A static run of one wave per round writes a round's row when the next round's replies
    # bring its evaluation: the pending round's row, and its evaluation's rejections, come again.
    pending = (
        None if state.plateau is None or state.plateau.pending is None else state.plateau.pending
    )
    rows_through = state.server_round if pending is None else int(pending[0]) - 1

    def keep(r: Rejection) -> bool:
        if r.server_round > state.server_round:
            return False
        if pending is not None and r.phase == "evaluate" and r.server_round >= int(pending[0]):
            return False
        if r.phase.startswith(("monitor p", "data p")):
            period = int(r.phase.rsplit(" p", 1)[1])
            return period <= done or (period == next_period and kept is not None)
        return True

    report.restore(rows_through, keep)
    timeline.restore(done)
    checkpoints.drop_seeds_after(done)
    if epsilon is not None:
        epsilon.restore(state.server_round)
    if kept is None:
        return None
    rejected = sum(
        r.phase == f"monitor p{next_period}" and r.node_id != 0 for r in report.rejections
    )
    return CollectedStats(kept, rejected)


def replay(
    drift: DriftWatch,
    checkpoints: CheckpointStore,
    rows: Sequence[PeriodRow],
    done: int,
    keep_reference_on_reject: bool = True,
) -> None:
    """Feed ``drift`` the kept statistics of periods 1..``done`` as the run did.

    ``rows`` are the run's timeline rows: each replayed decision must match its row's. The
    monitor starts afresh after a retrain that changed what serves, or after every retrain
    in a run that began without ``keep_reference_on_reject`` (checkpoint format 1), from the
    seed kept for a promotion (none in a run that predates seeds).
    """
    if done < 0:
        return

    def seed(period: int, stats: PeriodStats | None) -> Seed | None:
        scores = checkpoints.load_seed(period)
        return None if scores is None else Seed(stats, scores)

    drift.trained(0, initial=True, seed=seed(0, None))
    retrained = {row.period: row.retrain for row in rows}
    fired = {row.period: policy_fired(row.retrain, row.schedule) for row in rows}
    actions = {row.period: row.action for row in rows}
    for period in range(1, done + 1):
        stats = checkpoints.load_stats(period)
        if stats is None:
            raise FederationError(f"checkpoint: statistics of period {period} are missing")
        if stats.total.n == 0:  # a period without data: nothing was monitored
            continue
        observation = drift.observe(stats)
        if observation.retrain != fired[period]:  # the policy's verdict, before any window
            raise FederationError(
                f"resume: replaying period {period} decided retrain={observation.retrain} but "
                f"the run decided {fired[period]}; the run folder is inconsistent"
            )
        if retrained[period]:
            changed = released(actions[period]) or not keep_reference_on_reject
            drift.trained(period, serving_changed=changed, seed=seed(period, stats))

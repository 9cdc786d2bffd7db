"""The federation loop: initial evaluation, then train and evaluate for each server round.

We own the loop (``Strategy.start`` cannot be extended); the configured Flower strategy only
samples sites and aggregates their replies.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedretrain.config import RunConfig, from_yaml
from fedretrain.flower.records import (
    decline_reason,
    epsilon_from_reply,
    error_summary,
    eval_result,
    instruction_config,
)
from fedretrain.flower.strategies import build_strategy, user_level_epsilon
from fedretrain.flower.validated import FederationError
from fedretrain.model_io import save_state_dict
from fedretrain.privacy.tracking import EpsilonTracker
from fedretrain.report import RoundRow, RunReport
from fedretrain.site import build_model, build_pool
from fedretrain.training import EvalResult
from fedretrain.validation import Rejection

log = logging.getLogger(__name__)


def run_federation(
    grid: Grid, config_yaml: str, run_dir: Path, out: TextIO = sys.stdout
) -> dict[str, object]:
    """Run ``runtime.num_rounds`` rounds on ``grid``; write the run folder; return the summary."""
    cfg = from_yaml(config_yaml)
    random.seed(cfg.runtime.seed)  # Flower samples nodes with the global `random` module
    report = RunReport(run_dir, cfg.runtime.num_rounds, out)
    (run_dir / "config.yaml").write_text(config_yaml)
    strategy = build_strategy(cfg, report.reject)
    pool = build_pool(cfg.task.dataset)
    model = build_model(cfg, pool)
    arrays = ArrayRecord(model.state_dict())
    timeout = cfg.validation.reply_timeout_s
    ledger_dir, epsilon = privacy_accounting(cfg, run_dir)

    start = time.perf_counter()
    evaluation, n_eval = _evaluate(strategy, report, grid, arrays, 0, config_yaml, cfg)
    report.add(RoundRow.from_eval(0, evaluation, math.nan, 0, n_eval, time.perf_counter() - start))
    # Sites count as trained or evaluated only when their reply passed validation.
    for server_round in range(1, cfg.runtime.num_rounds + 1):
        start = time.perf_counter()
        config = instruction_config(config_yaml, cfg.runtime.num_rounds, ledger_dir=ledger_dir)
        messages = strategy.configure_train(server_round, arrays, config, grid)
        replies = trained_replies(
            grid.send_and_receive(messages, timeout=timeout), report, server_round, epsilon
        )
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        train_loss = float(train_metrics["train-loss"]) if train_metrics else math.nan  # type: ignore[arg-type]
        evaluation, n_eval = _evaluate(
            strategy, report, grid, arrays, server_round, config_yaml, cfg
        )
        report.add(
            RoundRow.from_eval(
                server_round,
                evaluation,
                train_loss,
                accepted_count(replies, report, server_round, "train"),
                n_eval,
                time.perf_counter() - start,
            )
        )

    if epsilon is not None:
        epsilon.plot(run_dir / "privacy.png")
    model.load_state_dict(arrays.to_torch_state_dict())
    save_state_dict(
        model.state_dict(), run_dir / "model.safetensors", metadata={"task": cfg.task.name}
    )
    return report.finish(
        {
            "task": cfg.task.name,
            "strategy": str(cfg.strategy._target_),
            "clients": cfg.runtime.num_clients,
            "run_dir": str(run_dir),
            **privacy_summary(epsilon, strategy),
        }
    )


def privacy_accounting(cfg: RunConfig, run_dir: Path) -> tuple[str | None, EpsilonTracker | None]:
    """Under DP-SGD: the simulated sites' ledger folder and a tracker writing privacy.csv."""
    if not cfg.privacy.enabled:
        return None, None
    ledger_dir = str(Path(cfg.privacy.ledger_dir or run_dir / "privacy").resolve())
    return ledger_dir, EpsilonTracker(run_dir / "privacy.csv", cfg.privacy.delta)


def privacy_summary(epsilon: EpsilonTracker | None, strategy: Strategy) -> dict[str, object]:
    """The summary's privacy entries: each site's DP-SGD ε and the user-level ε, if any."""
    summary: dict[str, object] = {}
    if epsilon is not None:
        summary["privacy"] = epsilon.summary()
    user = user_level_epsilon(strategy)
    if user is not None:
        summary["user_level_epsilon"] = user
    return summary


def trained_replies(
    replies: Iterable[Message],
    report: RunReport,
    server_round: int,
    epsilon: EpsilonTracker | None,
    period: int | None = None,
) -> list[Message]:
    """A train round's replies, ready to aggregate.

    Sites that declined (their privacy budget would not allow the round) are recorded and
    left out; what DP-SGD cost each site that trained is tracked, whether or not its update
    is accepted later (the privacy is spent either way); then as :func:`checked_replies` and
    :func:`canonical_order`.
    """
    kept = []
    for reply in replies:
        declined = decline_reason(reply)
        if declined is None:
            kept.append(reply)
            continue
        phase, reason = declined
        node = int(reply.metadata.src_node_id)
        log.info("round %d: node %d declined: %s", server_round, node, reason)
        report.reject(Rejection(server_round, phase, node, reason))
    if epsilon is not None:
        reports = [e for r in kept if (e := epsilon_from_reply(r)) is not None]
        epsilon.observe(server_round, period, reports)
    return canonical_order(checked_replies(kept, "train"))


def _evaluate(
    strategy: Strategy,
    report: RunReport,
    grid: Grid,
    arrays: ArrayRecord,
    server_round: int,
    config_yaml: str,
    cfg: RunConfig,
) -> tuple[EvalResult | None, int]:
    """Federated evaluation; returns the summed statistics and how many sites replied."""
    messages = strategy.configure_evaluate(
        server_round, arrays, instruction_config(config_yaml, cfg.runtime.num_rounds), grid
    )
    timeout = cfg.validation.reply_timeout_s
    replies = checked_replies(grid.send_and_receive(messages, timeout=timeout), "evaluate")
    metrics = strategy.aggregate_evaluate(server_round, replies)
    valid = accepted_count(replies, report, server_round, "evaluate")
    return (eval_result(metrics) if metrics is not None else None), valid


def checked_replies(replies: Iterable[Message], what: str) -> list[Message]:
    """Log failed replies; stop the run when every site failed, with their reasons."""
    replies = list(replies)
    errors = [r for r in replies if r.has_error()]
    for reply in errors:
        log.warning(
            "%s failed at node %s: %s", what, reply.metadata.src_node_id, reply.error.reason
        )
    if replies and len(errors) == len(replies):
        # A site's reason is often a whole traceback: its last line names the exception.
        reasons = sorted({error_summary(r.error.reason) for r in errors})
        raise FederationError(f"every site failed to {what}: " + "; ".join(reasons))
    return replies


def canonical_order(replies: list[Message]) -> list[Message]:
    """Replies sorted by the hash of their arrays rather than by arrival.

    Aggregation adds floats in reply order, and arrival order varies with scheduling; sorting by
    content makes a run repeat itself bit for bit under the same seed.
    """

    def key(reply: Message) -> tuple[bool, str]:
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return (True, "")
        return (False, reply.content.array_records["arrays"].object_id)

    return sorted(replies, key=key)


def accepted_count(replies: list[Message], report: RunReport, server_round: int, phase: str) -> int:
    """Replies that reached aggregation: the validation wrapper records every failed or
    rejected one; without it, only error replies are left out."""
    recorded = report.rejected(server_round, phase)
    return len(replies) - recorded if recorded else sum(not r.has_error() for r in replies)

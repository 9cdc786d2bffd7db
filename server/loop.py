"""The federation loop: initial evaluation, then train and evaluate for each server round.

We own the loop (``Strategy.start`` cannot be extended); the configured Flower strategy only
samples sites and aggregates their replies.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import TextIO

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedretrain.config import RunConfig, from_yaml
from fedretrain.flower.federation import (
    accepted_count,
    checked_replies,
    privacy_accounting,
    privacy_summary,
    seed_sampling,
    trained_replies,
)
from fedretrain.flower.records import (
    eval_result,
    instruction_config,
)
from fedretrain.flower.strategies import build_strategy
from fedretrain.model_io import save_state_dict
from fedretrain.report import RoundRow, RunReport
from fedretrain.site import build_model, build_pool
from fedretrain.training import EvalResult

log = logging.getLogger(__name__)


def run_federation(
    grid: Grid, config_yaml: str, run_dir: Path, out: TextIO = sys.stdout
) -> dict[str, object]:
    """Run ``runtime.num_rounds`` rounds on ``grid``; write the run folder; return the summary."""
    cfg = from_yaml(config_yaml)
    seed_sampling(cfg.runtime.seed)
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

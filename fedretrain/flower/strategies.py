"""Build the configured Flower strategy."""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate

from fedretrain.config import RunConfig, strategy_kwargs
from fedretrain.flower.records import sum_eval_metrics
from fedretrain.flower.validated import ValidatedStrategy
from fedretrain.validation import Quorum, Rejection


def build_strategy(
    cfg: RunConfig, record: Callable[[Rejection], None] = lambda _: None
) -> Strategy:
    """Instantiate ``cfg.strategy`` with sampling from ``cfg.runtime`` and summed evaluation,
    wrapped in reply validation unless ``validation.enabled`` is false.

    ``record`` receives every rejected reply and skipped round.
    """
    strategy = instantiate(cfg.strategy, _partial_=True)(
        **strategy_kwargs(cfg.runtime), evaluate_metrics_aggr_fn=sum_eval_metrics
    )
    if not isinstance(strategy, Strategy):
        raise TypeError(
            f"strategy._target_={cfg.strategy._target_} built a {type(strategy).__name__}, "
            "not a flwr.serverapp.strategy.Strategy"
        )
    if not cfg.validation.enabled:
        return strategy
    v = cfg.validation
    return ValidatedStrategy(
        strategy,
        v.rules,
        Quorum(v.quorum_fraction, v.quorum_min_replies),
        v.node_wait_timeout_s,
        record,
    )

"""Build the configured Flower strategy."""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate

from fedretrain.config import RunConfig, strategy_kwargs
from fedretrain.flower.records import sum_eval_metrics


def build_strategy(cfg: RunConfig) -> Strategy:
    """Instantiate ``cfg.strategy`` with sampling from ``cfg.runtime`` and summed evaluation."""
    strategy = instantiate(cfg.strategy, _partial_=True)(
        **strategy_kwargs(cfg.runtime), evaluate_metrics_aggr_fn=sum_eval_metrics
    )
    if not isinstance(strategy, Strategy):
        raise TypeError(
            f"strategy._target_={cfg.strategy._target_} built a {type(strategy).__name__}, "
            "not a flwr.serverapp.strategy.Strategy"
        )
    return strategy

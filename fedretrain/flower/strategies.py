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
    user_level = cfg.privacy.user_level
    if user_level:
        strategy = user_level_dp(strategy, cfg)
    if not cfg.validation.enabled:
        return strategy
    v = cfg.validation
    return ValidatedStrategy(
        strategy,
        v.rules,
        Quorum(v.quorum_fraction, v.quorum_min_replies),
        v.node_wait_timeout_s,
        record,
        user_level_dp=user_level,
    )


def user_level_dp(strategy: Strategy, cfg: RunConfig) -> Strategy:
    """``strategy`` inside Flower's server-side fixed-clipping DP wrapper, with its accountant.

    Flower accounts each release as a Gaussian mechanism without amplification by sampling
    (``no-amplification``), which holds whichever sites are sampled: conservative. Its
    accounted mode skips a round unless every sampled site's update arrives, since the noise
    is calibrated to that many.
    """
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
    from flwr.supercore.privacy_accounting import (
        NeighboringRelation,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting import PrivacyConfig as FlowerPrivacyConfig
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    p, runtime = cfg.privacy, cfg.runtime
    accountant = RdpAccountant(
        FlowerPrivacyConfig(
            target_delta=p.delta,
            population_size=runtime.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=p.user_epsilon_budget,
        )
    )
    sampled = max(int(runtime.num_clients * runtime.fraction_train), 1)  # as FedAvg samples
    return DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=p.user_noise_multiplier,
        clipping_norm=p.user_clipping_norm,
        num_sampled_clients=sampled,
        accountant=accountant,
    )


def user_level_epsilon(strategy: Strategy) -> float | None:
    """The user-level ε spent so far at the run's δ, if a DP wrapper accounts for it."""
    current: Strategy | None = strategy
    while current is not None:
        spent = getattr(current, "privacy_spent", None)
        if callable(spent):
            result = spent()
            return None if result is None else float(result.epsilon)
        current = getattr(current, "inner", None) or getattr(current, "strategy", None)
    return None

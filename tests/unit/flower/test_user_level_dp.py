"""User-level DP: Flower's server-side fixed clipping behind our reply validation, real Flower
messages, and Flower's accountant checked against Google's dp-accounting."""

import numpy as np
import pytest
from fakes import FakeGrid
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.task_identity import TaskIdentity
from oracles import dp_accounting_epsilon

from fedretrain.config import ConfigError, compose
from fedretrain.flower.strategies import build_strategy, user_level_epsilon
from fedretrain.preflight import to_typed
from fedretrain.privacy.rdp import SampledGaussian
from fedretrain.validation import Rejection

SITES = 4
SIGMA, CLIP = 0.8, 1.0
GLOBAL = {"w": np.zeros(20_000, np.float32)}


def _reply(node: int, update: np.ndarray, num_examples: int) -> Message:
    TaskIdentity.node_id = node  # a message takes its source from the process's identity
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(GLOBAL["w"] + update)}),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 0.5}),
        }
    )
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def _strategy(*overrides: str):  # noqa: ANN202
    cfg = to_typed(
        compose(
            [
                f"runtime.num_clients={SITES}",
                "privacy.user_level=true",
                f"privacy.user_noise_multiplier={SIGMA}",
                f"privacy.user_clipping_norm={CLIP}",
                "validation.max_norm_ratio=null",
                *overrides,
            ]
        ),
        build_targets=False,
    )
    log: list[Rejection] = []
    return build_strategy(cfg, log.append), log


def _configure(strategy, server_round: int) -> list[Message]:  # noqa: ANN001
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    return list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid([1, 2, 3, 4]))
    )


def _google_epsilon(releases: int, delta: float = 1e-5) -> float:
    """``releases`` Gaussian mechanisms of σ = SIGMA on every site's update."""
    return dp_accounting_epsilon([SampledGaussian(SIGMA, 1.0, releases)], delta)


def test_flowers_clipping_alone_crashes_on_an_unchanged_model() -> None:
    """The trap the guard is for (FACTS.md): a zero update divides by zero."""
    inner = DifferentialPrivacyServerSideFixedClipping(FedAvg(), SIGMA, CLIP, SITES)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    inner.configure_train(1, arrays, ConfigRecord(), FakeGrid([1, 2, 3, 4]))
    replies = [_reply(n, np.zeros(20_000, np.float32), 10) for n in (1, 2, 3, 4)]
    with pytest.raises(ZeroDivisionError):
        inner.aggregate_train(1, replies)


def test_an_unchanged_model_is_rejected_and_the_round_skipped_not_crashed() -> None:
    strategy, log = _strategy()
    _configure(strategy, 1)
    rng = np.random.default_rng(0)
    replies = [_reply(n, rng.normal(0, 0.01, 20_000).astype(np.float32), 10) for n in (1, 2, 3)]
    replies.append(_reply(4, np.zeros(20_000, np.float32), 10))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None
    assert [r.node_id for r in log] == [4, 0]
    assert "unchanged model (zero update)" in log[0].reason
    assert "calibrated to all 4 sampled sites and 3 valid updates" in log[1].reason
    assert user_level_epsilon(strategy) == 0.0  # nothing was released


def test_sites_are_clipped_averaged_unweighted_and_noised_as_accounted() -> None:
    strategy, log = _strategy()
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 1, 20_000).astype(np.float32) for _ in range(SITES)]
    updates[0] *= 0.001  # one small update, inside the clipping bound
    for server_round in (1, 2, 3):
        _configure(strategy, server_round)
        replies = [_reply(n + 1, u, 10 * (n + 1)) for n, u in enumerate(updates)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert arrays is not None and not log
    clipped = [u * min(1.0, CLIP / np.linalg.norm(u)) for u in updates]
    mean = np.mean(clipped, axis=0)  # unweighted, though the sites claimed 10..40 examples
    noise = arrays["w"].numpy() - mean
    assert abs(noise.mean()) < 5 * SIGMA * CLIP / SITES / np.sqrt(20_000)
    assert np.std(noise) == pytest.approx(SIGMA * CLIP / SITES, rel=0.03)
    assert user_level_epsilon(strategy) == pytest.approx(_google_epsilon(3), rel=1e-6)


def test_the_user_level_budget_stops_releases_and_says_so() -> None:
    budget = (_google_epsilon(2) + _google_epsilon(3)) / 2  # room for two releases
    strategy, log = _strategy(f"privacy.user_epsilon_budget={budget}")
    rng = np.random.default_rng(2)
    sent = []
    for server_round in (1, 2, 3):
        messages = _configure(strategy, server_round)
        sent.append(len(messages))
        replies = [_reply(n, rng.normal(0, 1, 20_000).astype(np.float32), 10) for n in (1, 2, 3, 4)]
        strategy.aggregate_train(server_round, replies[: len(messages)])
    assert sent == [4, 4, 0]
    assert len(log) == 1 and log[0].server_round == 3 and log[0].node_id == 0
    assert "round skipped" in log[0].reason and "max_epsilon" in log[0].reason
    assert user_level_epsilon(strategy) == pytest.approx(_google_epsilon(2), rel=1e-6)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("strategy=fedmedian", "needs strategy=fedavg"),
        ("validation=off", "needs validation on"),
        ("privacy.user_noise_multiplier=0", "user_noise_multiplier=0"),
    ],
)
def test_user_level_dp_refuses_what_it_cannot_account(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        to_typed(compose(["privacy.user_level=true", override]), build_targets=False)
    assert any(fragment in p for p in err.value.problems)

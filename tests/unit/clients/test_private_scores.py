"""Clustered adaptation under DP (issue 14, item 6): a site's per-model scores are noised and
accounted like its monitoring statistics, and a cluster's DP-SGD round costs ε only at its own
sites, at the sample rate of the buffer they really train on. The real handlers, fed Flower
messages (no Ray); ε against dp-accounting."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from oracles import dp_accounting_epsilon

from clients.app import _scenario, monitor_handler, train_handler
from fedretrain.config import compose, from_yaml, to_yaml
from fedretrain.errors import ConfigError
from fedretrain.flower.records import (
    BUFFER_FROM_KEY,
    BUFFER_SITES_KEY,
    DEFAULT_CLUSTER_KEY,
    MODEL_SCORES_KEY,
    MODELS_KEY,
    MONITOR_QUERY,
    SERVE_CLUSTERS_KEY,
    SERVE_SITES_KEY,
    edges_record,
    epsilon_from_reply,
    instruction_config,
    model_record_name,
    model_scores_problem,
    stats_from_record,
)
from fedretrain.monitor.private import RELEASED, stats_epsilon
from fedretrain.monitor.private_scores import privatize_scores
from fedretrain.monitor.stats import HistogramEdges, WindowStats
from fedretrain.preflight import to_typed
from fedretrain.privacy import PrivacyLedger, SampledGaussian

SITES = 3
SCENARIO = (
    "scenario=sine_flip",
    "scenario.num_periods=3",
    "scenario.schedule.at=[2]",
    f"runtime.num_clients={SITES}",
    "adaptation=clustered",
)


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@cache
def _config_yaml(*overrides: str) -> str:
    return to_yaml(compose(["runtime.seed=0", *SCENARIO, *overrides]))


def _record(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().numpy()) for k, v in model.state_dict().items()})


def _models(config_yaml: str, count: int) -> list[ArrayRecord]:
    """``count`` different models of the run's architecture (the first as initialised)."""
    base = _scenario(config_yaml, SITES).model
    out = [_record(base)]
    for i in range(1, count):
        other = copy.deepcopy(base)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(i)
            for p in other.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        out.append(_record(other))
    return out


def _query(config_yaml: str, ledger_dir: Path, clusters: int, period: int = 1) -> Message:
    """A clustered statistics query: every site serves cluster 0, ``clusters`` models live."""
    models = _models(config_yaml, clusters)
    config = instruction_config(
        config_yaml, num_rounds=3, period=period, ledger_dir=str(ledger_dir)
    )
    config["server-round"] = period + 3
    config[MODELS_KEY] = list(range(clusters))
    config[SERVE_SITES_KEY], config[SERVE_CLUSTERS_KEY] = list(range(SITES)), [0] * SITES
    config[DEFAULT_CLUSTER_KEY] = 0
    edges = HistogramEdges(np.tile(np.linspace(0.1, 0.9, 7), (2, 1)))
    content = RecordDict({"arrays": models[0], "config": config, "edges": edges_record(edges)})
    for cluster, record in enumerate(models):
        content[model_record_name(cluster)] = record
    return Message(content=content, dst_node_id=1, message_type=MONITOR_QUERY)


def _context(site: int) -> Context:
    return Context(1, 1, {"partition-id": site, "num-partitions": SITES}, RecordDict(), {})


def _table(reply: Message) -> np.ndarray:
    return reply.content.array_records[MODEL_SCORES_KEY]["table"].numpy()


def _server_check(reply: Message, clusters: int) -> str | None:
    """What FlowerFederation checks of a site's scores (its _model_scores)."""
    stats = stats_from_record(reply.content.array_records["stats"])
    served = (0, int(round(float(np.trace(stats.confusion)))))
    return model_scores_problem(_table(reply), list(range(clusters)), stats.n, served)


# ----------------------------------------------------------------------------- the mechanism


def _sent(n: int, served_correct: float) -> WindowStats:
    half = n / 2
    return WindowStats(
        n=n,
        x_sum=np.zeros(1),
        x_sq_sum=np.zeros(1),
        hist=np.zeros((1, 2)),
        label_counts=np.array([half, half]),
        pred_counts=np.array([half, half]),
        confusion=np.array([[served_correct, 0.0], [0.0, 0.0]]),
        loss_sum=0.0,
        maxprob_sum=0.0,
    )


def test_unserved_models_get_noise_of_sigma_root_k_and_the_served_row_is_derived() -> None:
    sigma, n, draws = 2.0, 10_000, 4_000
    exact = np.array([[0, 6_000, n], [1, 5_000, n], [2, 3_000, n], [3, 8_000, n]])
    rng = np.random.default_rng(7)
    sent = _sent(n, served_correct=6_012.4)  # the statistics' noisy trace
    rows = np.stack([privatize_scores(exact, 1, sent, sigma, rng) for _ in range(draws)])
    assert (rows[:, :, 2] == n).all()  # examples: the released n
    assert (rows[:, 1, 1] == 6_012).all()  # the served row: the rounded trace, no new noise
    others = [0, 2, 3]
    errors = rows[:, others, 1] - exact[others, 1]
    expected_sd = sigma * np.sqrt(len(others))  # sensitivity sqrt(3), multiplier sigma
    # var of the rounded noise: sd^2 + 1/12; a sample sd of 12,000 draws is within ~2%.
    sd = np.sqrt(errors.var(ddof=1))
    assert sd == pytest.approx(np.sqrt(expected_sd**2 + 1 / 12), rel=0.04)
    assert abs(errors.mean()) < 4 * sd / np.sqrt(errors.size)  # rounding keeps it unbiased
    assert np.allclose(np.corrcoef(errors.T)[np.triu_indices(3, 1)], 0, atol=0.06)
    # Off: exact rows unchanged; near the edges, whole counts clipped into [0, n].
    np.testing.assert_array_equal(privatize_scores(exact, 1, sent, 0.0, rng), exact)
    edge = privatize_scores(np.array([[0, 0, 5], [1, 5, 5]]), 9, _sent(5, 0), 50.0, rng)
    assert ((edge[:, 1] >= 0) & (edge[:, 1] <= 5)).all()


# ----------------------------------------------------------------------------- statistics noise


def test_noised_scores_pass_the_servers_checks_and_differ_from_the_exact_ones(
    tmp_path: Path,
) -> None:
    exact_yaml = _config_yaml()
    noisy_yaml = _config_yaml(
        "privacy.stats_noise_multiplier=20.0", "privacy.stats_feature_bound=1.0"
    )
    exact = monitor_handler(_query(exact_yaml, tmp_path, 3), _context(1))
    noisy = monitor_handler(_query(noisy_yaml, tmp_path, 3), _context(1))
    assert _server_check(exact, 3) is None and _server_check(noisy, 3) is None
    e, s = _table(exact), _table(noisy)
    np.testing.assert_array_equal(s[:, 0], e[:, 0])
    assert not np.array_equal(s[:, 1], e[:, 1])  # σ√2 = 28 counts of noise on a window of 60
    stats = stats_from_record(noisy.content.array_records["stats"])
    assert (s[:, 2] == stats.n).all()
    assert not (tmp_path / "site-1.json").exists()  # no DP-SGD: no ledger; ε reported apart


def test_the_epsilon_reported_apart_counts_the_scores_of_every_period_after_the_first() -> None:
    privacy = to_typed(
        compose([*SCENARIO, "privacy.stats_noise_multiplier=5.0"]), build_targets=False
    ).privacy
    eps = stats_epsilon(privacy, 10, scored_periods=9)
    oracle = dp_accounting_epsilon(
        [SampledGaussian(5.0, 1.0, 10 * len(RELEASED)), SampledGaussian(5.0, 1.0, 9)], 1e-5
    )
    assert eps == pytest.approx(oracle, rel=0.01)
    assert eps > stats_epsilon(privacy, 10)  # type: ignore[operator]


# ----------------------------------------------------------------------------- under DP-SGD


def test_under_dpsgd_the_scores_are_a_ledger_entry_of_their_own(tmp_path: Path) -> None:
    config_yaml = _config_yaml("privacy=dpsgd")
    sigma = from_yaml(config_yaml).privacy.stats_noise_multiplier
    assert sigma is not None
    reply = monitor_handler(_query(config_yaml, tmp_path, 3), _context(2))
    assert _server_check(reply, 3) is None
    again = monitor_handler(_query(config_yaml, tmp_path, 3), _context(2))  # a resumed server
    np.testing.assert_array_equal(_table(again), _table(reply))
    ledger = PrivacyLedger.load(tmp_path / "site-2.json")
    assert [e.tag.split(" request ")[0] for e in ledger.entries] == [
        "period 1 model scores",
        "period 1 statistics",
    ]
    assert ledger.entries[0].mechanism == SampledGaussian(sigma, 1.0, 1)
    oracle = dp_accounting_epsilon([SampledGaussian(sigma, 1.0, len(RELEASED) + 1)], 1e-5)
    assert ledger.epsilon(1e-5) == pytest.approx(oracle, rel=0.01)
    claim = epsilon_from_reply(reply)
    assert claim is not None and claim.ran is not None
    # The server audits the statistics' mechanism; the site's ε covers both releases.
    assert claim.ran == SampledGaussian(sigma / np.sqrt(len(RELEASED)), 1.0, 1)
    assert claim.epsilon == pytest.approx(ledger.epsilon(1e-5))
    assert claim.spent == pytest.approx(ledger.epsilon(1e-5))
    # One live model: its row is the statistics' own; nothing more is released or recorded.
    monitor_handler(_query(config_yaml, tmp_path, 1, period=2), _context(0))
    [only] = PrivacyLedger.load(tmp_path / "site-0.json").entries
    assert only.tag.startswith("period 2 statistics")


def _train(config_yaml: str, ledger_dir: Path, site: int, period: int, since: int) -> Message:
    config = instruction_config(
        config_yaml, num_rounds=3, period=period, ledger_dir=str(ledger_dir)
    )
    config["server-round"] = 7
    config[BUFFER_SITES_KEY], config[BUFFER_FROM_KEY] = [site], [since]
    content = RecordDict({"arrays": _models(config_yaml, 1)[0], "config": config})
    message = Message(content=content, dst_node_id=1, message_type="train")
    return train_handler(message, _context(site))


def test_a_clusters_round_charges_its_sites_at_the_sample_rate_of_their_buffers(
    tmp_path: Path,
) -> None:
    config_yaml = _config_yaml("privacy=dpsgd", "privacy.noise_multiplier=1.0")
    cfg = from_yaml(config_yaml)
    scenario = _scenario(config_yaml, SITES)
    windows = [len(scenario.window(1, p)[0]) for p in (0, 1, 2)]
    reply = _train(config_yaml, tmp_path, site=1, period=2, since=0)  # cluster A: site 1 alone
    examples = reply.content.metric_records["metrics"]["num-examples"]
    assert examples == sum(windows)  # the buffer: periods 0, 1 and 2
    [entry] = PrivacyLedger.load(tmp_path / "site-1.json").entries
    rate = cfg.train.batch_size / sum(windows)
    assert entry.sample_rate == pytest.approx(rate)
    assert entry.steps == cfg.train.local_epochs * round(1 / rate)
    oracle = dp_accounting_epsilon([entry.mechanism], cfg.privacy.delta)
    assert entry.epsilon == pytest.approx(oracle, rel=0.01)
    claim = epsilon_from_reply(reply)
    assert claim is not None and claim.examples == sum(windows)  # what the server plans from
    # The sites of the other cluster were not in the round: no ledger, no ε.
    assert sorted(p.name for p in tmp_path.glob("site-*.json")) == ["site-1.json"]


# ----------------------------------------------------------------------------- configs


def test_clustered_composes_with_dp_and_refuses_user_level_dp_with_the_fix() -> None:
    for overrides in (["privacy=dpsgd"], ["privacy.stats_noise_multiplier=5.0"]):
        to_typed(compose([*SCENARIO, *overrides]), build_targets=False)
    with pytest.raises(ConfigError) as info:
        to_typed(
            compose([*SCENARIO, "privacy=dpsgd", "privacy.user_level=true"]),
            build_targets=False,
        )
    clustered = [p for p in info.value.problems if p.startswith("adaptation=clustered")]
    assert len(clustered) == 1
    assert "privacy.user_level=false" in clustered[0] and "adaptation=single" in clustered[0]

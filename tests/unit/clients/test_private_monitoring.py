"""One privacy guarantee per site (issue 18, item 4): under ``privacy=dpsgd`` a site's monitoring
statistics are noised by default and each period's release is in its ledger, so its one ε
covers its training and its monitoring. The ClientApp's monitor handler is fed real Flower
messages (no Ray)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from oracles import dp_accounting_epsilon

from clients.app import _scenario, monitor_handler
from fedretrain.config import compose, from_yaml, to_yaml
from fedretrain.errors import ConfigError
from fedretrain.flower.records import (
    MONITOR_QUERY,
    decline_reason,
    edges_record,
    epsilon_from_reply,
    instruction_config,
)
from fedretrain.monitor.private import RELEASED, statistics_privacy, stats_epsilon
from fedretrain.monitor.stats import HistogramEdges
from fedretrain.preflight import to_typed
from fedretrain.privacy import PrivacyLedger, SampledGaussian
from fedretrain.privacy.releases import RELEASED_AGAIN

SITES = 3
SCENARIO = (
    "scenario=sine_flip",
    "scenario.num_periods=3",
    "scenario.schedule.at=[2]",
    f"runtime.num_clients={SITES}",
)


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@cache
def _config_yaml(*overrides: str) -> str:
    return to_yaml(compose(["runtime.seed=0", *SCENARIO, *overrides]))


def _query(config_yaml: str, ledger_dir: Path, period: int = 1, server_round: int = 4) -> Message:
    """The server's statistics query for ``period``, as FlowerFederation.collect_stats sends it."""
    model = _scenario(config_yaml, SITES).model
    arrays = ArrayRecord({k: Array(v.detach().numpy()) for k, v in model.state_dict().items()})
    config = instruction_config(
        config_yaml, num_rounds=3, period=period, ledger_dir=str(ledger_dir)
    )
    config["server-round"] = server_round
    edges = HistogramEdges(np.tile(np.linspace(0.1, 0.9, 7), (2, 1)))
    content = RecordDict({"arrays": arrays, "config": config, "edges": edges_record(edges)})
    return Message(content=content, dst_node_id=1, message_type=MONITOR_QUERY)


def _context(site: int) -> Context:
    return Context(1, 1, {"partition-id": site, "num-partitions": SITES}, RecordDict(), {})


def _stats(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content.array_records["stats"].items()}


def test_dpsgd_noises_the_statistics_by_default_with_the_tasks_feature_bound() -> None:
    sine = to_typed(compose(["privacy=dpsgd", *SCENARIO]), build_targets=False).privacy
    assert sine.stats_noise_multiplier is not None and sine.stats_noise_multiplier > 0
    assert sine.stats_feature_bound == 1.0  # x in [0, 1]^2
    sea = to_typed(compose(["privacy=dpsgd", "scenario=sea_staggered"]), build_targets=False)
    assert sea.privacy.stats_feature_bound == 10.0  # x in [0, 10]^3
    assert statistics_privacy(sine).endswith("in each site's ε")
    assert stats_epsilon(sine, 10) is None  # in the ledger, not reported apart
    exact = to_typed(compose(["privacy=dpsgd", "privacy.stats_noise_multiplier=null"]))
    assert statistics_privacy(exact.privacy).startswith("exact: not private")
    assert to_typed(compose([]), build_targets=False).privacy.stats_noise_multiplier is None


def test_noisy_statistics_without_a_feature_bound_fail_before_anything_starts() -> None:
    with pytest.raises(ConfigError) as info:
        to_typed(compose(["privacy=dpsgd", *SCENARIO, "task.feature_bound=null"]))
    [problem] = info.value.problems
    assert "privacy=dpsgd noises them by default" in problem
    assert "privacy.stats_feature_bound=B" in problem
    assert "privacy.stats_noise_multiplier=null" in problem
    # A static run sends no statistics: a table without a known bound trains under DP-SGD.
    static = compose(["privacy=dpsgd", "task=tabular_file", "task.dataset.path=x.csv"])
    assert to_typed(static, build_targets=False).privacy.stats_feature_bound is None


def test_each_release_is_in_the_ledger_at_an_independent_accountants_epsilon(
    tmp_path: Path,
) -> None:
    config_yaml = _config_yaml("privacy=dpsgd")
    sigma = from_yaml(config_yaml).privacy.stats_noise_multiplier
    assert sigma is not None
    for period in (0, 1, 2):
        reply = monitor_handler(_query(config_yaml, tmp_path, period, period + 3), _context(1))
        claim = epsilon_from_reply(reply)
        assert claim is not None and claim.site == 1
    ledger = PrivacyLedger.load(tmp_path / "site-1.json")
    assert [e.tag.split(" request ")[0] for e in ledger.entries] == [
        f"period {p} statistics" for p in (0, 1, 2)
    ]
    # Seven Gaussian blocks, each σ times its sensitivity, three periods, no sampling.
    oracle = dp_accounting_epsilon([SampledGaussian(sigma, 1.0, 3 * len(RELEASED))], 1e-5)
    assert ledger.epsilon(1e-5) == pytest.approx(oracle, rel=0.01)
    assert claim.epsilon == pytest.approx(ledger.epsilon(1e-5))
    assert not (tmp_path / "site-0.json").exists()  # each site its own ledger


def test_a_query_asked_again_gets_the_same_release_at_no_new_epsilon(tmp_path: Path) -> None:
    config_yaml = _config_yaml("privacy=dpsgd")  # noise from the OS: two draws would differ
    first = monitor_handler(_query(config_yaml, tmp_path), _context(2))
    again = monitor_handler(_query(config_yaml, tmp_path), _context(2))
    for name, values in _stats(first).items():
        np.testing.assert_array_equal(_stats(again)[name], values, err_msg=name)
    assert len(PrivacyLedger.load(tmp_path / "site-2.json").entries) == 1
    # Lost cache: released again, counted again, and the ledger says so.
    (tmp_path / "site-2.statistics.safetensors").unlink()
    monitor_handler(_query(config_yaml, tmp_path), _context(2))
    entries = PrivacyLedger.load(tmp_path / "site-2.json").entries
    assert len(entries) == 2 and entries[1].tag.endswith(RELEASED_AGAIN)
    assert entries[1].epsilon > entries[0].epsilon


def test_a_site_at_its_budget_declines_to_send_its_statistics(tmp_path: Path) -> None:
    config_yaml = _config_yaml("privacy=dpsgd", "privacy.epsilon_budget=0.5")
    reply = monitor_handler(_query(config_yaml, tmp_path), _context(0))
    declined = decline_reason(reply)
    assert declined is not None
    assert "declines to send period 1's statistics" in declined[1] and "budget 0.50" in declined[1]
    assert "stats" not in reply.content.array_records
    assert PrivacyLedger.open(tmp_path / "site-0.json", 0).entries == ()


def test_exact_statistics_touch_no_ledger(tmp_path: Path) -> None:
    config_yaml = _config_yaml("privacy=dpsgd", "privacy.stats_noise_multiplier=null")
    reply = monitor_handler(_query(config_yaml, tmp_path), _context(0))
    assert epsilon_from_reply(reply) is None  # nothing spent, nothing claimed
    assert float(_stats(reply)["n"][0]).is_integer()
    assert list(tmp_path.iterdir()) == []

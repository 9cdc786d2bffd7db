"""The privacy ledger: persistent, never reset, checked against Google's dp-accounting."""

import json
import math
from pathlib import Path

import pytest
from oracles import dp_accounting_epsilon

from fedretrain.privacy.ledger import LEDGER_VERSION, LedgerFormatError, PrivacyLedger
from fedretrain.privacy.rdp import SampledGaussian

DELTA = 1e-5
# Three retraining cycles of a few rounds each, as a site with 1,438 digits would run them:
# (sigma, q, steps per round, rounds).
CYCLES = [
    (1.1, 16 / 1438, 270, 3),
    (0.9, 32 / 1438, 135, 2),
    (2.0, 16 / 1200, 225, 4),
]


def run_cycles(path: Path | None, restart_after: int | None) -> PrivacyLedger:
    ledger = PrivacyLedger.open(path, site="3") if path else PrivacyLedger(site="3")
    for c, (sigma, q, steps, rounds) in enumerate(CYCLES):
        for r in range(rounds):
            ledger.record(f"v{c + 1}/r{r + 1}", SampledGaussian(sigma, q, steps), DELTA)
        if path is not None and restart_after == c:
            del ledger  # the site process dies; a new one opens the file
            ledger = PrivacyLedger.open(path, site="3")
    return ledger


def test_published_value_through_the_ledger(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "site-0.json", site="0")
    ledger.record("v1/r1", SampledGaussian(1.5, 0.04, 2250), DELTA)
    assert ledger.epsilon(DELTA) == pytest.approx(7.32911117143, rel=1e-6)
    reloaded = PrivacyLedger.open(tmp_path / "site-0.json", site="0")
    assert reloaded.epsilon(DELTA) == pytest.approx(7.32911117143, rel=1e-6)


def test_cumulative_epsilon_over_cycles_and_a_restart_matches_dp_accounting(
    tmp_path: Path,
) -> None:
    ledger = run_cycles(tmp_path / "site-3.json", restart_after=1)
    composition = [SampledGaussian(s, q, n * r) for s, q, n, r in CYCLES]
    expected = dp_accounting_epsilon(composition, DELTA)
    assert ledger.epsilon(DELTA) == pytest.approx(expected, rel=0.01)
    # Tighter than the brief's 1%: at these epsilons the two RDP implementations agree closely.
    assert ledger.epsilon(DELTA) == pytest.approx(expected, rel=1e-4)
    assert len(ledger.entries) == sum(r for *_, r in CYCLES)
    assert ledger.composition == tuple(composition)  # equal (sigma, q) rounds merged


def test_a_ledger_recreated_from_disk_never_resets(tmp_path: Path) -> None:
    in_memory = run_cycles(None, restart_after=None)
    restarted = run_cycles(tmp_path / "site-3.json", restart_after=0)
    restarted_twice = PrivacyLedger.open(tmp_path / "site-3.json", site="3")
    assert restarted.epsilon(DELTA) == in_memory.epsilon(DELTA)
    assert restarted_twice.epsilon(DELTA) == in_memory.epsilon(DELTA)
    assert [e.epsilon for e in restarted_twice.entries] == [e.epsilon for e in in_memory.entries]
    # and the last cycle alone would report far less: what a reset engine shows
    last = PrivacyLedger(site="3")
    sigma, q, steps, rounds = CYCLES[-1]
    last.record("v3", SampledGaussian(sigma, q, steps * rounds), DELTA)
    assert last.epsilon(DELTA) < 0.6 * in_memory.epsilon(DELTA)


def test_entries_log_epsilon_over_time(tmp_path: Path) -> None:
    ledger = run_cycles(tmp_path / "s.json", restart_after=None)
    history = ledger.epsilon_history(DELTA)
    assert [tag for tag, _ in history] == [e.tag for e in ledger.entries]
    values = [eps for _, eps in history]
    assert values == sorted(values) and values[0] > 0
    assert values == pytest.approx([e.epsilon for e in ledger.entries], rel=1e-12)
    spent = [e.epsilon_spent for e in ledger.entries]
    assert spent[0] == values[0] and all(s > 0 for s in spent)
    assert sum(spent) == pytest.approx(values[-1])


def test_file_layout_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "privacy" / "site-7.json"
    ledger = PrivacyLedger.open(path, site=7)
    assert not path.exists()  # nothing written before the first record
    ledger.record("v1/r1", SampledGaussian(1.1, 0.01, 300), DELTA)
    ledger.record("v1/r2", SampledGaussian(1.1, 0.01, 300), DELTA)
    state = json.loads(path.read_text())
    assert state["format"] == "fedretrain.privacy_ledger"
    assert state["version"] == LEDGER_VERSION
    assert state["site"] == "7"
    assert state["composition"] == [{"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 600}]
    assert [e["tag"] for e in state["entries"]] == ["v1/r1", "v1/r2"]
    assert set(state["entries"][0]) == {
        "tag", "noise_multiplier", "sample_rate", "steps", "delta", "epsilon",
        "epsilon_spent", "recorded_at",
    }  # fmt: skip
    assert [p.name for p in path.parent.iterdir()] == ["site-7.json"]  # no temporary left


def test_no_noise_is_infinite_epsilon_and_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "site-1.json"
    ledger = PrivacyLedger.open(path, site="1")
    ledger.record("v1/r1", SampledGaussian(0.0, 0.1, 10), DELTA)
    assert ledger.epsilon(DELTA) == math.inf

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    state = json.loads(path.read_text(), parse_constant=refuse)
    assert state["entries"][0]["epsilon"] == "inf"
    assert PrivacyLedger.load(path).epsilon(DELTA) == math.inf
    decision = PrivacyLedger.load(path).would_exceed([], budget=100.0, delta=DELTA)
    assert not decision.allowed


def test_load_refuses_newer_versions_other_sites_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "site-2.json"
    PrivacyLedger.open(path, site="2").record("v1", SampledGaussian(1.0, 0.01, 100), DELTA)
    state = json.loads(path.read_text())

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**state, "version": LEDGER_VERSION + 1}))
    with pytest.raises(LedgerFormatError, match="newer fedretrain"):
        PrivacyLedger.load(newer)

    with pytest.raises(LedgerFormatError, match="site '2', not '5'"):
        PrivacyLedger.open(path, site="5")

    edited = tmp_path / "edited.json"
    state["composition"][0]["steps"] = 1  # someone "fixes" their budget by hand
    edited.write_text(json.dumps(state))
    with pytest.raises(LedgerFormatError, match="checksum does not match"):
        PrivacyLedger.load(edited)
    # A version-1 file has no checksum: the composition check still catches the edit.
    unsummed = tmp_path / "unsummed.json"
    old = {k: v for k, v in state.items() if k != "checksum"}
    unsummed.write_text(json.dumps({**old, "version": 1}))
    with pytest.raises(LedgerFormatError, match="edited or corrupted"):
        PrivacyLedger.load(unsummed)

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(LedgerFormatError, match="not valid JSON"):
        PrivacyLedger.load(garbage)
    with pytest.raises(LedgerFormatError, match="not a privacy ledger"):
        PrivacyLedger.from_state_dict({"version": 1})


def boundary(prior: list[SampledGaussian], sigma: float, q: float) -> tuple[int, float]:
    """Steps k and a budget with oracle(prior + k steps) < budget < oracle(prior + k + 1)."""
    k = 400
    low = dp_accounting_epsilon([*prior, SampledGaussian(sigma, q, k)], DELTA)
    high = dp_accounting_epsilon([*prior, SampledGaussian(sigma, q, k + 1)], DELTA)
    assert high > low
    return k, (low + high) / 2


@pytest.mark.parametrize(("sigma", "q"), [(1.1, 0.011), (0.8, 0.02), (3.0, 0.05)])
def test_would_exceed_flips_exactly_at_the_budget(sigma: float, q: float) -> None:
    prior = [SampledGaussian(1.0, 0.01, 800)]
    ledger = PrivacyLedger(site="3")
    ledger.record("v1", prior[0], DELTA)
    k, budget = boundary(prior, sigma, q)
    fits = ledger.would_exceed([SampledGaussian(sigma, q, k)], budget, DELTA)
    crosses = ledger.would_exceed([SampledGaussian(sigma, q, k + 1)], budget, DELTA)
    assert fits.allowed and not crosses.allowed
    assert fits.epsilon_now == crosses.epsilon_now == ledger.epsilon(DELTA)
    assert fits.epsilon_after <= budget < crosses.epsilon_after
    oracle_after = dp_accounting_epsilon([*prior, SampledGaussian(sigma, q, k + 1)], DELTA)
    assert crosses.epsilon_after == pytest.approx(oracle_after, rel=1e-3)
    assert crosses.reason == (
        f"site 3 declines: training would raise ε from {crosses.epsilon_now:.2f} to "
        f"{crosses.epsilon_after:.2f} > budget {budget:.2f} at δ=1e-05"
    )
    assert fits.reason.startswith("site 3 may train")
    assert len(ledger.entries) == 1  # asking records nothing


def test_no_budget_always_allows() -> None:
    ledger = PrivacyLedger(site="x")
    decision = ledger.would_exceed([SampledGaussian(0.5, 0.5, 1000)], None, DELTA)
    assert decision.allowed and decision.budget is None and decision.epsilon_after > 50
    assert ledger.would_exceed([], 1.0, DELTA).epsilon_after == 0.0

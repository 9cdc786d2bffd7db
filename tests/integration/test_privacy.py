"""DP-SGD on Flower's simulation engine: sites account every round in their ledgers, a site at
its lifetime budget declines while the run goes on, and the ε the run reports agrees with an
independent accountant (Google's dp-accounting)."""

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from oracles import dp_accounting_epsilon

from fedretrain.config import compose
from fedretrain.preflight import to_typed
from fedretrain.privacy import PrivacyLedger, SampledGaussian
from fedretrain.registry import Registry
from fedretrain.site import Site

pytestmark = pytest.mark.integration

Simulate = Callable[..., Path]  # the `simulate` fixture of conftest.py

BUDGET = 5.0
DELTA = 1e-5
SITES, ROUNDS = 4, 4
# Site 2 spent this in an earlier run that shared its ledger folder.
EARLIER = SampledGaussian(noise_multiplier=1.0, sample_rate=0.044, steps=132)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory, simulate: Simulate) -> tuple[Path, Path]:
    ledgers = tmp_path_factory.mktemp("ledgers")
    PrivacyLedger.open(ledgers / "site-2.json", 2).record("earlier run", EARLIER, DELTA)
    out = simulate(
        tmp_path_factory.mktemp("budget"),
        "privacy=dpsgd",
        # seeded noise: the accuracy check below is on one fixed run, not on a draw of the
        # operating system's entropy, which now and then leaves the last round under it
        "privacy.reproducible=true",
        f"privacy.epsilon_budget={BUDGET}",
        f"privacy.delta={DELTA}",
        f"privacy.ledger_dir={ledgers}",
        f"runtime.num_clients={SITES}",
        f"runtime.num_rounds={ROUNDS}",
        "tracking=tensorboard",
    )
    return out, ledgers


def test_a_site_at_its_budget_declines_while_the_others_train_on(
    budget_run: tuple[Path, Path],
) -> None:
    out, ledgers = budget_run
    cfg = to_typed(compose([f"runtime.num_clients={SITES}"]), build_targets=False)
    expected_trained, expected_declined = [0] * ROUNDS, [0] * ROUNDS
    for site in range(SITES):
        ledger = PrivacyLedger.load(ledgers / f"site-{site}.json")
        rounds = [e for e in ledger.entries if e.tag != "earlier run"]
        assert rounds, f"site {site} never trained"
        per_round = rounds[0].mechanism
        # The plan: Poisson sampling at the expected batch over the site's own training data.
        n = len(Site.build(cfg, site, SITES).train_data)
        assert per_round.sample_rate == pytest.approx(cfg.train.batch_size / n)
        assert per_round.noise_multiplier == 1.0
        # Oracle: the site trains a round exactly when dp-accounting's ε stays within budget.
        history = [EARLIER] if site == 2 else []
        for r in range(ROUNDS):
            after = dp_accounting_epsilon([*history, per_round], DELTA)
            assert abs(after - BUDGET) > 0.02 * BUDGET  # no accountant rounding at the edge
            if after <= BUDGET:
                history.append(per_round)
                expected_trained[r] += 1
            else:
                expected_declined[r] += 1
        assert [e.mechanism for e in rounds] == history[1 if site == 2 else 0 :]
        assert ledger.epsilon(DELTA) <= BUDGET
        assert ledger.epsilon(DELTA) == pytest.approx(
            dp_accounting_epsilon(history, DELTA), rel=0.01
        )
    # The earlier spending makes site 2 stop before the others, which train on after it.
    assert 0 < expected_declined[1] < SITES
    metrics = pd.read_csv(out / "metrics.csv").set_index("round")
    assert metrics.loc[1:, "train_clients"].tolist() == expected_trained
    assert metrics.loc[1:, "declined"].tolist() == expected_declined
    assert metrics.loc[1:, "rejected"].eq(0).all()  # a decline is not a bad update
    assert len(metrics) == ROUNDS + 1  # every round ran, the last without anyone training
    assert metrics.loc[ROUNDS, "accuracy"] > metrics.loc[0, "accuracy"] + 0.1
    rejections = pd.read_csv(out / "rejections.csv")
    declines = rejections[rejections["phase"] == "privacy"]
    assert len(declines) == sum(expected_declined)
    assert declines["reason"].str.contains("declines: training would raise ε").all()
    assert declines["reason"].str.contains(f"> budget {BUDGET:.2f}").all()


def test_the_run_reports_each_sites_epsilon_as_its_ledger_has_it(
    budget_run: tuple[Path, Path],
) -> None:
    out, ledgers = budget_run
    summary = json.loads((out / "summary.json").read_text())
    reported = summary["privacy"]["epsilon_by_site"]
    assert set(reported) == {str(s) for s in range(SITES)}
    for site, epsilon in reported.items():
        ledger = PrivacyLedger.load(ledgers / f"site-{site}.json")
        assert epsilon == pytest.approx(ledger.epsilon(DELTA), rel=1e-9)
    over_time = pd.read_csv(out / "privacy.csv")
    assert over_time.groupby("site")["epsilon"].is_monotonic_increasing.all()
    assert over_time.groupby("site")["epsilon"].max().to_dict() == pytest.approx(
        {int(s): e for s, e in reported.items()}
    )
    assert (out / "privacy.png").stat().st_size > 0


def test_tensorboard_shows_each_round_and_each_sites_epsilon_as_its_ledger_has_it(
    budget_run: tuple[Path, Path],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, ledgers = budget_run
    events = EventAccumulator(str(out / "tensorboard" / "rounds"))
    events.Reload()
    metrics = pd.read_csv(out / "metrics.csv")
    accuracy = events.Scalars("round/accuracy")
    assert [e.step for e in accuracy] == metrics["round"].tolist()
    assert [e.value for e in accuracy] == pytest.approx(metrics["accuracy"].tolist(), rel=1e-6)
    for site in range(SITES):
        ledger = PrivacyLedger.load(ledgers / f"site-{site}.json")
        last = events.Scalars(f"epsilon/site_{site}")[-1]
        assert last.step == ROUNDS
        assert last.value == pytest.approx(ledger.epsilon(DELTA), rel=1e-6)


def test_each_version_of_a_drift_run_records_what_it_cost_each_site(
    tmp_path: Path, simulate: Simulate
) -> None:
    out = simulate(
        tmp_path / "run",
        "scenario=sine_flip",
        "scenario.num_periods=3",
        "scenario.schedule.at=[2]",
        "policy=periodic",
        "retrain.max_rounds=3",
        "privacy=dpsgd",
        f"runtime.num_clients={SITES}",
    )
    with Registry(out) as registry:
        versions = [v.to_dict() for v in registry.versions()]
    trained = [v for v in versions if v["trigger"] in ("initial", "warm", "reinit")]
    assert trained
    for version in trained:
        spent = version["epsilon"]
        assert set(spent) == {str(s) for s in range(SITES)} and all(v > 0 for v in spent.values())
    # Each site's one ledger holds its training rounds and each period's noisy statistics
    # (issue 18, item 4), and its ε is their composition by an independent accountant.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statistics_privacy"].endswith("in each site's ε")
    assert "stats_epsilon" not in summary
    initial_rounds = int(pd.read_csv(out / "timeline.csv")["rounds"].iloc[0])
    for site in range(SITES):
        ledger = PrivacyLedger.load(out / "privacy" / f"site-{site}.json")
        kinds = [e.tag.split(" request ")[0] for e in ledger.entries]
        assert [k for k in kinds if "statistics" in k] == [
            f"period {p} statistics" for p in range(3)
        ]
        assert kinds[0] == "period 0 statistics" and kinds[1].startswith("round 1")
        oracle = dp_accounting_epsilon([e.mechanism for e in ledger.entries], DELTA)
        assert summary["privacy"]["epsilon_by_site"][str(site)] == pytest.approx(oracle, rel=0.02)
        # The initial version cost each site what its initial rounds added to period 0's
        # statistics (the statistics are not the model's cost).
        history = ledger.epsilon_history(DELTA)
        cost = versions[0]["epsilon"][str(site)]
        assert cost == pytest.approx(history[initial_rounds][1] - history[0][1], rel=1e-9)
    timeline = pd.read_csv(out / "timeline.csv")
    assert timeline["max_epsilon"].is_monotonic_increasing
    assert timeline["max_epsilon"].iloc[-1] == pytest.approx(
        max(json.loads((out / "summary.json").read_text())["privacy"]["epsilon_by_site"].values())
    )

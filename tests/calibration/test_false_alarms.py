"""Monte Carlo: stationary false-alarm rates against the target ``1 / arl``.

Each run resets the detector (a fresh reference, as after a retrain) and feeds stationary
periods; the per-period alarm rate over the tested periods must not exceed ``1 / arl`` beyond
sampling error (Bonferroni and exact tests may be conservative) and must not be absurdly
conservative either, which would waste detection power.
"""

from __future__ import annotations

import numpy as np
import pytest
from monitor_sim import false_alarm_rate, fast_period

from fedretrain.monitor.binomial_error import BinomialErrorTest, fisher_greater
from fedretrain.monitor.calibration import confirm_level
from fedretrain.monitor.cusum import ErrorCusum
from fedretrain.monitor.histogram import HistogramDrift
from fedretrain.monitor.homogeneity import chi2_homogeneity
from fedretrain.monitor.page_hinkley import ErrorPageHinkley

ARL = 20.0
REF = 3


@pytest.mark.parametrize(
    "make, runs, per_run, low",
    [
        # Fixed reference: runs of 20 tested periods, each run a fresh reference.
        (lambda: HistogramDrift(ARL, REF), 100, REF + 20, 0.5),
        # Fisher's test is discrete at ~10 errors a site: conservative, hence the lower floor.
        (lambda: BinomialErrorTest(ARL, REF), 80, REF + 20, 0.3),
        # Self-starting sequential tests: longer runs, the reference grows.
        (lambda: ErrorCusum(ARL, REF), 15, REF + 100, 0.4),
        (lambda: ErrorPageHinkley(ARL, REF), 15, REF + 100, 0.4),
    ],
    ids=["histogram", "binomial", "cusum", "page_hinkley"],
)
def test_stationary_false_alarm_rate_is_at_most_one_per_arl(make, runs, per_run, low):
    rate = false_alarm_rate(make(), fast_period, runs, per_run, seed=0, reference=REF)
    # About 2,000 tested periods, 100 alarms expected at most: sampling sd ~10%, plus the
    # clustering a shared reference causes.
    assert low / ARL <= rate <= 1.3 / ARL


def test_chi2_tail_stays_honest_at_small_levels() -> None:
    """Per-test level of the merged chi-square on 200,000 null tables of a skewed distribution
    (sparse outer bins, 100 vs 300 samples) at 1e-3, where the raw approximation breaks first."""
    rng = np.random.default_rng(1)
    probs = [0.6, 0.2, 0.1, 0.05, 0.03, 0.015, 0.004, 0.001]
    cur = rng.multinomial(100, probs, size=200_000)
    ref = rng.multinomial(300, probs, size=200_000)
    _, _, p = chi2_homogeneity(cur, ref)
    for level in (1e-2, 1e-3):
        assert (p < level).mean() == pytest.approx(level, rel=0.25)


def test_confirmed_path_spends_its_budget_where_the_naive_level_overspends() -> None:
    """Two consecutive tests against one reference: P(both p < a') is the budget with the
    correlated level, and about 2.5 times the budget with ``budget ** (1 / 2)``."""
    rng = np.random.default_rng(2)
    runs, budget = 60_000, 1e-3
    e_ref = rng.binomial(3000, 0.1, runs)
    p1 = fisher_greater(rng.binomial(1000, 0.1, runs), 1000, e_ref, 3000)
    p2 = fisher_greater(rng.binomial(1000, 0.1, runs), 1000, e_ref, 3000)
    level = float(confirm_level(budget, 2, rho=1000 / 4000))
    naive = budget**0.5
    assert ((p1 < level) & (p2 < level)).mean() == pytest.approx(budget, rel=0.4)
    assert ((p1 < naive) & (p2 < naive)).mean() > 1.8 * budget

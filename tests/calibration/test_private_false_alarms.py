"""Monte Carlo: the noise-aware detectors keep their false-alarm target on private statistics,
and detectors that read noisy counts as exact ones overspend it (see
:mod:`fedretrain.monitor.private`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from monitor_sim import false_alarm_rate, fast_period

from fedretrain.monitor.binomial_error import BinomialErrorTest
from fedretrain.monitor.cusum import ErrorCusum
from fedretrain.monitor.histogram import HistogramDrift
from fedretrain.monitor.page_hinkley import ErrorPageHinkley
from fedretrain.monitor.private import privatize
from fedretrain.monitor.stats import PeriodStats

ARL, REF, SIGMA = 20.0, 3, 3.0


def noisy(sigma: float) -> Callable[[np.random.Generator, int], PeriodStats]:
    """Stationary periods as a private site sends them: noise sd ``sigma`` per unit count."""

    def draw(rng: np.random.Generator, t: int) -> PeriodStats:
        exact = fast_period(rng, t)
        return PeriodStats(
            t, {s: privatize(w, sigma, rng, 1.0, 1.0) for s, w in exact.sites.items()}
        )

    return draw


CALIBRATED = {
    "histogram": (lambda s: HistogramDrift(ARL, REF, stats_noise_std=s), 100, REF + 20),
    "binomial": (lambda s: BinomialErrorTest(ARL, REF, stats_noise_std=s), 80, REF + 20),
    "cusum": (lambda s: ErrorCusum(ARL, REF, stats_noise_std=s), 15, REF + 100),
    "page_hinkley": (lambda s: ErrorPageHinkley(ARL, REF, stats_noise_std=s), 15, REF + 100),
}


@pytest.mark.parametrize("name", CALIBRATED)
def test_noise_aware_detectors_keep_one_false_alarm_per_arl(name) -> None:
    """Noise sd 3 per unit-sensitivity count (histogram cells: 3 sqrt(2), more than the
    multinomial's sd in most bins): about 2,000 tested periods, at most ~100 alarms expected;
    measured 0.7 to 1.0 times the target. (Label and prediction shift share the histogram's
    test; their noise variances are checked against privatize above.)"""
    make, runs, per_run = CALIBRATED[name]
    rate = false_alarm_rate(make(SIGMA), noisy(SIGMA), runs, per_run, seed=0, reference=REF)
    assert 0.3 / ARL <= rate <= 1.3 / ARL


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # effect sizes of negative counts
@pytest.mark.parametrize("name", ["histogram", "binomial", "cusum"])
def test_detectors_blind_to_the_noise_overspend_their_budget(name) -> None:
    """The same noisy periods read as exact counts: 3 to 20 times the target false alarms."""
    make, runs, per_run = CALIBRATED[name]
    rate = false_alarm_rate(make(0.0), noisy(SIGMA), runs // 4, per_run, seed=0, reference=REF)
    assert rate > 2.5 / ARL

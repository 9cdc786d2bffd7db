"""Private monitoring statistics: the mechanism's sensitivity, noise and ε, and detectors that
keep their false-alarm calibration on noisy counts (fedretrain.monitor.private)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from oracles import dp_accounting_epsilon
from scipy import special

from fedretrain.config import ConfigError
from fedretrain.monitor.base import Detector
from fedretrain.monitor.baselines import Periodic
from fedretrain.monitor.binomial_error import BinomialErrorTest, noisy_error_score
from fedretrain.monitor.cusum import ErrorCusum
from fedretrain.monitor.histogram import HistogramDrift, LabelShift, PredictionShift
from fedretrain.monitor.homogeneity import chi2_homogeneity, wald_homogeneity
from fedretrain.monitor.monitor import build_detectors
from fedretrain.monitor.page_hinkley import ErrorPageHinkley
from fedretrain.monitor.private import (
    RELEASED,
    StatsMechanism,
    bounded_window_stats,
    check_stats,
    count_noise_variance,
    noise_std_for,
    noisy_stats_problem,
    privatize,
    released,
    sensitivity,
    stats_epsilon,
)
from fedretrain.monitor.stats import HistogramEdges, PeriodStats, WindowStats, window_stats
from fedretrain.privacy.config import PrivacyConfig
from fedretrain.privacy.rdp import SampledGaussian

FEATURES, BINS, CLASSES = 4, 5, 3
BOUND, LOSS_BOUND = 2.0, 3.0


def dataset(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Features often beyond the bound, losses often beyond theirs, three classes."""
    x = rng.normal(0.0, 3.0, (n, FEATURES))
    y = rng.integers(0, CLASSES, n)
    probs = rng.dirichlet(np.ones(CLASSES), n)
    losses = rng.exponential(2.0, n)
    return x, y, probs, losses


def edges() -> HistogramEdges:
    return HistogramEdges(np.tile(np.linspace(-3.0, 3.0, BINS - 1), (FEATURES, 1)))


def bounded(x, y, probs, losses) -> WindowStats:
    return bounded_window_stats(x, y, probs, losses, edges(), BOUND, LOSS_BOUND)


# ----------------------------------------------------------------------------- sensitivity


@pytest.mark.parametrize("labelled", [True, False])
def test_one_record_moves_each_released_block_by_at_most_its_sensitivity(labelled) -> None:
    rng = np.random.default_rng(0)
    x, y, probs, losses = dataset(rng, 40)
    extreme = (np.full((1, FEATURES), -1e3), np.array([2]), np.eye(CLASSES)[[2]], np.array([1e6]))
    neighbours = [tuple(np.delete(a, i, axis=0) for a in (x, y, probs, losses)) for i in range(40)]
    neighbours.append(
        tuple(np.concatenate([a, b]) for a, b in zip((x, y, probs, losses), extreme, strict=True))
    )

    def stats(x, y, probs, losses) -> dict[str, np.ndarray]:
        return released(bounded(x, y if labelled else None, probs, losses if labelled else None))

    base = stats(x, y, probs, losses)
    deltas = sensitivity(FEATURES, BOUND, LOSS_BOUND)
    assert set(deltas) == set(RELEASED)
    worst = dict.fromkeys(RELEASED, 0.0)
    for other in neighbours:
        moved = stats(*other)
        norms = {k: float(np.linalg.norm(moved[k] - base[k])) for k in RELEASED}
        for k in RELEASED:
            assert norms[k] <= deltas[k] * (1 + 1e-12), (k, norms[k], deltas[k])
            worst[k] = max(worst[k], norms[k])
        # Each block scaled by its sensitivity: the whole release moves by at most sqrt(7).
        assert sum((norms[k] / deltas[k]) ** 2 for k in RELEASED) <= len(RELEASED) + 1e-9
    # The bounds are tight where a record can reach them (the extreme record does).
    for k in ("hist", "pred_counts", "x_sum", "x_sq_sum", "maxprob_sum"):
        assert worst[k] == pytest.approx(deltas[k]), k
    assert worst["confusion"] == (1.0 if labelled else 0.0)
    assert worst["loss_sum"] == (pytest.approx(LOSS_BOUND) if labelled else 0.0)


def test_bounded_statistics_clip_only_the_sums() -> None:
    x, y, probs, losses = dataset(np.random.default_rng(1), 30)
    exact = window_stats(x, y, probs, losses, edges())
    clipped = bounded(x, y, probs, losses)
    for name in ("hist", "label_counts", "pred_counts", "confusion"):
        np.testing.assert_array_equal(getattr(clipped, name), getattr(exact, name))
    assert clipped.n == exact.n and clipped.maxprob_sum == exact.maxprob_sum
    np.testing.assert_allclose(clipped.x_sum, np.clip(x, -BOUND, BOUND).sum(0))
    assert clipped.loss_sum == pytest.approx(np.minimum(losses, LOSS_BOUND).sum())


# ----------------------------------------------------------------------------- noise


def test_noise_std_is_sigma_times_sensitivity_and_the_derived_fields_follow() -> None:
    rng = np.random.default_rng(2)
    stats = bounded(*dataset(rng, 50))
    sigma, draws = 1.5, 4000
    noisy = [privatize(stats, sigma, rng, BOUND, LOSS_BOUND) for _ in range(draws)]
    exact = released(stats)
    deltas = sensitivity(FEATURES, BOUND, LOSS_BOUND)
    for name in RELEASED:
        values = np.stack([released(s)[name] for s in noisy]) - exact[name]
        sd = sigma * deltas[name]
        # Per entry: mean 0 and sd sigma * Delta (4000 draws: ~1.1% sampling sd of the sd).
        assert np.abs(values.mean(axis=0)).max() < 5 * sd / math.sqrt(draws), name
        np.testing.assert_allclose(values.std(axis=0), sd, rtol=0.05, err_msg=name)
    # Derived fields: exactly what privatize promises, with the variance the detectors assume.
    for s in noisy[:50]:
        assert s.n == round(float(np.sum(s.pred_counts)))
        np.testing.assert_allclose(s.label_counts, np.sum(s.confusion, axis=1))
    confusion = np.stack([s.confusion for s in noisy])
    labelled = confusion.sum(axis=(1, 2))
    correct = np.trace(confusion, axis1=1, axis2=2)
    derived = {
        "labelled": labelled,
        "correct": correct,
        "errors": labelled - correct,
        "label_counts": confusion.sum(axis=2)[:, 0],
        "n": np.array([s.n for s in noisy], dtype=float),
    }
    for field, values in derived.items():
        var = count_noise_variance(field, sigma, FEATURES, CLASSES)
        if field == "n":
            var += 1 / 12  # rounding
        assert values.var() == pytest.approx(var, rel=0.08), field
    assert np.mean(derived["n"]) == pytest.approx(stats.n, abs=0.2)  # rounding is unbiased


def test_no_noise_is_the_identity_and_the_mechanism_off_sends_exact_statistics() -> None:
    rng = np.random.default_rng(3)
    x, y, probs, losses = dataset(rng, 20)
    stats = bounded(x, y, probs, losses)
    assert privatize(stats, 0.0, rng, BOUND, LOSS_BOUND) is stats
    off = StatsMechanism.from_config(PrivacyConfig())
    assert not off.enabled
    exact = off.window_stats(x, y, probs, losses, edges())
    np.testing.assert_array_equal(exact.x_sum, window_stats(x, y, probs, losses, edges()).x_sum)
    assert off.privatize(exact, rng) is exact


def test_mechanism_refuses_noise_without_finite_bounds() -> None:
    with pytest.raises(ValueError, match="feature_bound"):
        StatsMechanism(noise_multiplier=1.0)
    with pytest.raises(ValueError, match="bounds"):
        privatize(WindowStats.zeros(2, 3, 2), 1.0, np.random.default_rng(0), math.inf, 1.0)


# ----------------------------------------------------------------------------- ε


@pytest.mark.parametrize(("sigma", "periods"), [(2.0, 1), (5.0, 20), (10.0, 100), (30.0, 500)])
def test_epsilon_equals_dp_accounting_gaussian_composition(sigma, periods) -> None:
    delta = 1e-5
    ours = StatsMechanism(sigma, BOUND, LOSS_BOUND).epsilon(periods, delta)
    blocks = SampledGaussian(sigma, 1.0, len(RELEASED) * periods)  # one release per block
    per_period = SampledGaussian(sigma / math.sqrt(len(RELEASED)), 1.0, periods)  # composed
    assert ours == pytest.approx(dp_accounting_epsilon([blocks], delta), rel=0.01)
    assert ours == pytest.approx(dp_accounting_epsilon([per_period], delta), rel=0.01)


def test_stats_epsilon_is_reported_apart_from_dp_sgd_and_only_when_noise_is_on() -> None:
    private = PrivacyConfig(stats_noise_multiplier=5.0, stats_feature_bound=10.0, delta=1e-6)
    assert not private.enabled  # no DP-SGD needed
    expected = StatsMechanism(5.0, 10.0, private.stats_loss_bound).epsilon(40, 1e-6)
    assert stats_epsilon(private, 40) == expected
    assert stats_epsilon(private, 80) > expected  # cumulative over periods
    assert stats_epsilon(PrivacyConfig(enabled=True, noise_multiplier=1.0), 40) is None
    assert noise_std_for(private) == 5.0 and noise_std_for(PrivacyConfig()) == 0.0


# ----------------------------------------------------------------------------- config


def config_problems(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        PrivacyConfig(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"stats_noise_multiplier": 0.0, "stats_feature_bound": 1.0},
            "privacy.stats_noise_multiplier=0.0: must be a positive number (e.g. 2.0), or null",
        ),
        ({"stats_feature_bound": -1.0}, "privacy.stats_feature_bound=-1.0: must be a positive"),
        ({"stats_loss_bound": 0.0}, "privacy.stats_loss_bound=0.0: must be a positive number"),
    ],
)
def test_private_stats_config_names_each_bad_value_with_a_fix(kwargs, expected) -> None:
    found = config_problems(**kwargs)
    assert any(p.startswith(expected) for p in found), found


# ----------------------------------------------------------------------------- validation


def test_noisy_statistics_pass_the_noisy_check_and_corrupted_ones_do_not() -> None:
    rng = np.random.default_rng(4)
    mechanism = StatsMechanism(3.0, BOUND, LOSS_BOUND)
    privacy = PrivacyConfig(
        stats_noise_multiplier=3.0, stats_feature_bound=BOUND, stats_loss_bound=LOSS_BOUND
    )
    for _ in range(200):  # an unlabelled, tiny window too: counts near zero go negative
        x, y, probs, losses = dataset(rng, int(rng.integers(1, 60)))
        y, losses = (None, None) if rng.random() < 0.3 else (y, losses)
        sent = mechanism.privatize(bounded(x, y, probs, losses), rng)
        assert check_stats(sent, FEATURES, BINS, CLASSES, privacy) is None
    assert check_stats(sent, FEATURES, BINS, CLASSES, PrivacyConfig()) is not None  # exact check
    arrays = sent.to_arrays()
    corrupted = {
        "hist": {"hist": arrays["hist"] - 1001},  # the bad_stats attack
        "x_sum": {"x_sum": np.full(FEATURES, np.nan)},
        "label_counts": {"label_counts": arrays["label_counts"] + 50},
        "confusion": {"confusion": arrays["confusion"] + 300},
    }
    for name, change in corrupted.items():
        bad = WindowStats.from_arrays({**arrays, **change})
        problem = noisy_stats_problem(bad, FEATURES, BINS, CLASSES, mechanism)
        assert problem is not None and name in problem, (name, problem)


def test_edges_from_noisy_first_period_moments_stay_near_the_exact_ones() -> None:
    rng = np.random.default_rng(5)
    mechanism = StatsMechanism(2.0, 10.0, LOSS_BOUND)
    no_edges = HistogramEdges(np.zeros((FEATURES, 0)))
    sites = [dataset(rng, 500) for _ in range(10)]
    exact = [mechanism.window_stats(x, y, p, loss, no_edges) for x, y, p, loss in sites]
    noisy = [mechanism.privatize(s, rng) for s in exact]
    total, noisy_total = sum(exact[1:], exact[0]), sum(noisy[1:], noisy[0])
    want = HistogramEdges.from_moments(total.n, total.x_sum, total.x_sq_sum, bins=BINS)
    got = HistogramEdges.from_moments(
        noisy_total.n, noisy_total.x_sum, noisy_total.x_sq_sum, bins=BINS
    )
    np.testing.assert_allclose(got.interior, want.interior, atol=0.25)  # feature sd is 3


# ----------------------------------------------------------------------------- tests on noise


def test_wald_without_noise_is_pearsons_chi_square() -> None:
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.full(8, 0.7), size=300)
    cur = np.array([rng.multinomial(rng.integers(5, 400), p) for p in probs])
    ref = np.array([rng.multinomial(rng.integers(5, 1500), p) for p in probs])
    want = chi2_homogeneity(cur, ref)
    got = wald_homogeneity(cur, ref, 0.0, 0.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(got[1], want[1])


def test_wald_level_holds_on_noisy_null_tables_where_pearsons_does_not() -> None:
    rng = np.random.default_rng(7)
    probs, tables = [0.05, 0.15, 0.3, 0.3, 0.15, 0.05], 100_000
    var, ref_var = 18.0, 54.0  # one report and a three-report reference, sd ~4 per bin
    cur = rng.multinomial(100, probs, tables) + rng.normal(0, math.sqrt(var), (tables, 6))
    ref = rng.multinomial(300, probs, tables) + rng.normal(0, math.sqrt(ref_var), (tables, 6))
    _, _, p = wald_homogeneity(cur, ref, var, ref_var)
    _, _, p_pearson = chi2_homogeneity(cur, ref)
    for level in (1e-2, 1e-3):
        assert (p < level).mean() == pytest.approx(level, rel=0.3)
        assert (p_pearson < level).mean() > 10 * level


def test_noisy_error_score_is_standard_normal_in_the_tail() -> None:
    rng = np.random.default_rng(8)
    runs, n, n_ref, rate, sigma = 200_000, 100, 300, 0.1, 2.0
    v = np.array([2 * sigma**2, 2 * sigma**2])  # two classes: 2 error cells, 2 correct cells

    def noisy(total: int, reports: int) -> tuple[np.ndarray, np.ndarray]:
        errors = rng.binomial(total, rate, runs)
        noise = rng.normal(0.0, np.sqrt(reports * v), (runs, 2))
        return errors + noise[:, 0], total - errors + noise[:, 1]

    (errors, correct), (ref_errors, ref_correct) = noisy(n, 1), noisy(n_ref, 3)
    score = noisy_error_score(
        errors, errors + correct, ref_errors, ref_errors + ref_correct, v, 3 * v
    )
    p = special.ndtr(-score.z)
    for level in (1e-2, 1e-3):
        assert (p < level).mean() == pytest.approx(level, rel=0.3)


# ----------------------------------------------------------------------------- detectors

REF = 3


def privatized(stream: list[PeriodStats], sigma: float, seed: int) -> list[PeriodStats]:
    rng = np.random.default_rng(seed)
    return [
        PeriodStats(p.period, {s: privatize(w, sigma, rng, 10.0, 10.0) for s, w in p.sites.items()})
        for p in stream
    ]


def first_alarm(detector: Detector, periods: list[PeriodStats]) -> int | None:
    for t, stats in enumerate(periods):
        detector.update(stats)
        if detector.drift_detected:
            return t
    return None


@pytest.mark.parametrize(
    "make",
    [
        lambda: BinomialErrorTest(5000.0, REF, stats_noise_std=2.0),
        lambda: ErrorCusum(5000.0, REF, stats_noise_std=2.0),
        lambda: ErrorPageHinkley(5000.0, REF, stats_noise_std=2.0),
    ],
    ids=["binomial", "cusum", "page_hinkley"],
)
def test_noisy_error_detectors_catch_an_abrupt_rise(make, stream) -> None:
    periods = privatized(stream(20, 12, change_at=6, errors={s: 0.4 for s in range(10)}), 2.0, 0)
    assert first_alarm(make(), periods) in (6, 7, 8)


@pytest.mark.parametrize(
    "make", [HistogramDrift, LabelShift, PredictionShift], ids=["histogram", "labels", "preds"]
)
def test_noisy_histograms_catch_a_covariate_shift_and_stay_quiet_before(make, stream) -> None:
    periods = privatized(stream(21, 12, change_at=6, shifted=range(10)), 2.0, 1)
    detector = make(5000.0, REF, stats_noise_std=2.0)
    if make is HistogramDrift:
        assert first_alarm(detector, periods) in (6, 7, 8)
        assert detector.last.detail["feature"] == 0 and detector.last.test == "wald histogram"
    else:  # labels and predictions do not move under this covariate shift
        assert first_alarm(detector, periods) is None


# ----------------------------------------------------------------------------- the monitor


def test_build_detectors_routes_the_noise_and_refuses_detectors_blind_to_it() -> None:
    nodes = [
        {"_target_": "fedretrain.monitor.histogram.HistogramDrift", "_partial_": True},
        {"_target_": "fedretrain.monitor.cusum.ErrorCusum", "_partial_": True},
        {"_target_": "fedretrain.monitor.baselines.Periodic", "_partial_": True, "every": 3},
    ]
    exact = build_detectors(nodes, arl=100.0, reference_periods=2)
    assert [getattr(d, "stats_noise_std", None) for d in exact] == [0.0, 0.0, None]
    noisy = build_detectors(nodes, arl=100.0, reference_periods=2, stats_noise_std=2.5)
    assert [getattr(d, "stats_noise_std", None) for d in noisy] == [2.5, 2.5, None]
    assert isinstance(noisy[2], Periodic)
    blind = {"_target_": f"{__name__}.BlindDetector", "_partial_": True}
    assert build_detectors([blind], 100.0, 2)  # fine on exact statistics
    with pytest.raises(ValueError, match="BlindDetector takes no stats_noise_std"):
        build_detectors([blind], 100.0, 2, stats_noise_std=1.0)


class BlindDetector(HistogramDrift):
    """A calibrated detector that cannot take the noise into account."""

    def __init__(self, arl: float, reference_periods: int = 3) -> None:
        super().__init__(arl, reference_periods)


def test_accuracy_from_noisy_counts_stays_an_accuracy() -> None:
    # A near-perfect window after noise: 10.4 correct of 10 labelled (helper run of issue 18,
    # item 4: the timeline showed 1.002 and 1.005).
    arrays = WindowStats.zeros(FEATURES, BINS, CLASSES).to_arrays()
    arrays["confusion"] = np.diag([10.4, 0.0, 0.0]) + np.eye(CLASSES, k=1) * 0.1
    assert WindowStats.from_arrays(arrays).accuracy == 1.0
    arrays["confusion"] = np.diag([-0.3, 0.2, -0.9])  # labelled <= 0
    assert math.isnan(WindowStats.from_arrays(arrays).accuracy)

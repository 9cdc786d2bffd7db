"""The detectors' maths against independent oracles: scipy, River, closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from river import drift as river_drift
from scipy import special, stats

from fedretrain.monitor.binomial_error import critical_errors, fisher_greater
from fedretrain.monitor.calibration import (
    confirm_level,
    cusum_threshold,
    joint_tail,
    siegmund_arl,
    split_alpha,
    split_arl,
)
from fedretrain.monitor.cusum import Cusum, cusum_path
from fedretrain.monitor.homogeneity import chi2_homogeneity, js_divergence, merge_bins, psi
from fedretrain.monitor.page_hinkley import PageHinkley
from fedretrain.monitor.sequential import error_score, standardized_error


def random_tables(seed: int, count: int, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Tables of every kind: sparse and dense bins, empty bins, tiny and large samples."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(bins, 0.7), size=count)
    probs[rng.random((count, bins)) < 0.15] = 0.0
    probs[probs.sum(1) == 0, 0] = 1.0
    probs /= probs.sum(1, keepdims=True)
    n_cur = rng.integers(5, 400, count)
    n_ref = rng.integers(5, 1500, count)
    shift = rng.dirichlet(np.ones(bins), size=count) * (rng.random((count, 1)) < 0.5)
    cur = np.array(
        [
            rng.multinomial(n, (p + s) / (p + s).sum())
            for n, p, s in zip(n_cur, probs, shift, strict=True)
        ]
    )
    ref = np.array([rng.multinomial(n, p) for n, p in zip(n_ref, probs, strict=True)])
    return cur, ref


@pytest.mark.parametrize("test, scipy_lambda", [("chi2", None), ("g", "log-likelihood")])
def test_homogeneity_equals_scipy_chi2_contingency_on_the_merged_table(test, scipy_lambda) -> None:
    cur, ref = random_tables(0, 300)
    statistic, dof, p = chi2_homogeneity(cur, ref, test=test)
    merged_cur, merged_ref = merge_bins(cur, ref)
    checked = 0
    for i in range(len(cur)):
        table = np.vstack([merged_cur[i], merged_ref[i]])
        table = table[:, table.sum(0) > 0]
        if table.shape[1] < 2:
            assert (statistic[i], dof[i], p[i]) == (0.0, 0, 1.0)
            continue
        expected = stats.chi2_contingency(table, correction=False, lambda_=scipy_lambda)
        assert statistic[i] == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
        assert p[i] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
        assert dof[i] == expected.dof
        assert expected.expected_freq.min() >= 5 - 1e-9  # the merge rule's promise
        checked += 1
    assert checked > 200


def test_merging_keeps_totals_and_only_joins_neighbours() -> None:
    cur, ref = random_tables(1, 200)
    merged_cur, merged_ref = merge_bins(cur, ref)
    np.testing.assert_array_equal(merged_cur.sum(1), cur.sum(1))
    np.testing.assert_array_equal(merged_ref.sum(1), ref.sum(1))
    # Cumulative sums of the merged table are a subsequence of the original's (contiguous groups).
    for i in range(len(cur)):
        boundaries = set(np.cumsum(cur[i] + ref[i]).tolist())
        assert set(np.cumsum(merged_cur[i] + merged_ref[i]).tolist()) <= boundaries | {0}


def test_a_constant_feature_cannot_alarm() -> None:
    constant = np.array([[100, 0, 0, 0], [0, 0, 0, 300]])
    statistic, dof, p = chi2_homogeneity(constant, constant)
    assert p.tolist() == [1.0, 1.0] and dof.tolist() == [0, 0]


def test_effect_sizes_are_zero_for_equal_shapes_and_grow_with_the_shift() -> None:
    ref = np.array([100, 200, 300, 400])
    assert float(psi(ref, ref * 2)) == pytest.approx(0.0, abs=1e-5)  # pseudocounts aside
    assert float(js_divergence(ref, ref * 3)) == pytest.approx(0.0, abs=1e-12)
    assert float(js_divergence(np.array([1, 0]), np.array([0, 1]))) == pytest.approx(1.0)
    small, large = np.array([110, 200, 300, 390]), np.array([300, 200, 300, 200])
    assert 0 < psi(small, ref) < psi(large, ref)
    assert 0 < js_divergence(small, ref) < js_divergence(large, ref)


def test_fisher_p_value_equals_scipy_fisher_exact() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        n, n_ref = int(rng.integers(1, 300)), int(rng.integers(1, 1000))
        e, e_ref = int(rng.integers(0, n + 1)), int(rng.integers(0, n_ref + 1))
        expected = stats.fisher_exact([[e, n - e], [e_ref, n_ref - e_ref]], alternative="greater")
        got = float(fisher_greater(e, n, e_ref, n_ref))
        assert got == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert float(fisher_greater(5, 0, 3, 10)) == 1.0  # nothing labelled: no evidence


def test_critical_errors_is_the_first_count_below_the_level() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        n, n_ref = int(rng.integers(1, 300)), int(rng.integers(1, 900))
        e_ref, level = int(rng.integers(0, n_ref + 1)), 10 ** rng.uniform(-9, -1)
        p = fisher_greater(np.arange(n + 1), n, e_ref, n_ref)
        below = np.flatnonzero(p < level)
        expected = float(below[0]) if below.size else np.inf
        assert critical_errors(level, n, e_ref, n_ref) == expected


def test_error_score_is_the_normal_quantile_of_the_exact_mid_p() -> None:
    e, n, e_ref, n_ref = 17, 120, 40, 600
    x = stats.hypergeom(n + n_ref, e + e_ref, n)
    mid_p = x.sf(e) + 0.5 * x.pmf(e)
    assert float(error_score(e, n, e_ref, n_ref)) == pytest.approx(stats.norm.isf(mid_p))
    # The Wald statistic overstates a rise of rare errors (its right skew); the exact score not.
    assert (
        0 < float(error_score(e, n, e_ref, n_ref)) < float(standardized_error(e, n, e_ref, n_ref))
    )
    assert float(error_score(0, 100, 0, 300)) < 0.5  # no errors anywhere: no evidence


# ---------------------------------------------------------------- calibration maths


def test_bonferroni_splits_add_up_to_the_budget() -> None:
    for sites in (1, 3, 10):
        for share in (0.2, 0.5, 0.9):
            pooled, site = split_alpha(1e-3, sites, share)
            assert pooled + sites * site == pytest.approx(1e-3)
            arl_pooled, arl_site = split_arl(200, sites, share)
            assert 1 / arl_pooled + sites / arl_site == pytest.approx(1 / 200)
    with pytest.raises(ValueError, match="global_share"):
        split_alpha(1e-3, 3, 1.0)


@pytest.mark.parametrize("k", [0.25, 0.5, 1.0])
def test_siegmund_matches_its_closed_form_and_cusum_threshold_inverts_it(k) -> None:
    for h in (0.5, 3.0, 8.0):
        b = h + 1.166
        closed = (np.exp(2 * k * b) - 2 * k * b - 1) / (2 * k**2)
        assert siegmund_arl(h, k) == pytest.approx(closed, rel=1e-12)
    for arl in (5.0, 100.0, 5000.0, 1e7, 1e12):
        assert siegmund_arl(cusum_threshold(arl, k), k) == pytest.approx(arl, rel=1e-8)
    assert cusum_threshold(1.0, k) == 0.0  # below the ARL at h = 0: no positive threshold


@pytest.mark.parametrize("c, rho", [(2.0, 0.25), (3.5, 0.25), (4.5, 0.5), (2.5, 0.8), (3.0, 0.0)])
def test_joint_tail_equals_the_bivariate_normal_cdf(c, rho) -> None:
    mvn = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]])
    assert float(joint_tail(c, rho, 2)) == pytest.approx(mvn.cdf([-c, -c]), rel=1e-5)


def test_joint_tail_of_three_equals_the_trivariate_normal_cdf() -> None:
    rho, c = 0.3, 2.5
    cov = np.full((3, 3), rho) + (1 - rho) * np.eye(3)
    # scipy integrates by randomised quasi-Monte Carlo: ask for a tight error, seed it.
    mvn = stats.multivariate_normal(mean=np.zeros(3), cov=cov, abseps=1e-12, releps=1e-7)
    expected = mvn.cdf(np.full(3, -c), rng=np.random.default_rng(0))
    assert float(joint_tail(c, rho, 3)) == pytest.approx(expected, rel=1e-4)


def test_confirm_level_spends_exactly_the_budget() -> None:
    for alpha, confirm, rho in [(1e-4, 2, 0.25), (1e-6, 2, 0.5), (1e-5, 3, 0.25), (1e-3, 2, 0.0)]:
        level = float(confirm_level(alpha, confirm, rho))
        assert float(joint_tail(special.ndtri(1 - level), rho, confirm)) == pytest.approx(
            alpha, rel=1e-6
        )
    assert float(confirm_level(1e-4, 2, 0.0)) == pytest.approx(1e-2)
    assert float(confirm_level(1e-4, 1, 0.3)) == pytest.approx(1e-4)


# ---------------------------------------------------------------- scalar detectors


def seeded_sequences():
    rng = np.random.default_rng(4)
    yield list(rng.normal(0, 1, 600)) + list(rng.normal(1.5, 1, 600))
    yield list(rng.normal(0, 1, 600)) + list(rng.normal(-1.5, 1, 600))
    yield list(rng.integers(0, 2, 500).astype(float)) + list(rng.integers(4, 8, 500).astype(float))
    yield list(np.cumsum(rng.normal(0, 0.2, 1500)))  # a random walk: many alarms both ways


@pytest.mark.parametrize("mode", ["up", "down", "both"])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"min_instances": 5, "delta": 0.1, "threshold": 10.0, "alpha": 1.0},
        {"min_instances": 1, "delta": 0.5, "threshold": 4.0, "alpha": 0.99},
    ],
)
def test_page_hinkley_fires_where_river_does(mode, params) -> None:
    total = 0
    for sequence in seeded_sequences():
        ours, theirs = (
            PageHinkley(mode=mode, **params),
            river_drift.PageHinkley(mode=mode, **params),
        )
        ours_at, theirs_at = [], []
        for i, x in enumerate(sequence):
            ours.update(x)
            theirs.update(x)
            if ours.drift_detected:
                ours_at.append(i)
            if theirs.drift_detected:
                theirs_at.append(i)
        assert ours_at == theirs_at
        total += len(ours_at)
    assert total > 0


def test_page_hinkley_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="valid modes"):
        PageHinkley(mode="sideways")


def test_cusum_class_follows_the_recursion_and_restarts_after_an_alarm() -> None:
    z = np.random.default_rng(5).normal(0.3, 1, 300)
    cusum, values = Cusum(k=0.5, threshold=1e9), []
    for x in z:
        cusum.update(float(x))
        values.append(cusum.statistic)
    np.testing.assert_allclose(values, cusum_path(z, 0.5))
    cusum = Cusum(k=0.5, threshold=2.0)
    for x in [3.0, 0.6]:
        cusum.update(x)
    assert cusum.drift_detected is False and cusum.statistic == pytest.approx(0.1)


@pytest.mark.parametrize("target", [50.0, 200.0])
def test_cusum_run_length_on_normal_noise_matches_siegmund(target) -> None:
    """Mean run length of 3,000 CUSUMs on N(0, 1) at the calibrated h, within 20% of target."""
    rng = np.random.default_rng(int(target))
    h = cusum_threshold(target, k=0.5)
    streams, s = 3000, np.zeros(3000)
    run = np.full(streams, np.nan)
    for t in range(1, int(12 * target)):
        s = np.maximum(0.0, s + rng.standard_normal(streams) - 0.5)
        run[np.isnan(run) & (s > h)] = t
        if not np.isnan(run).any():
            break
    assert not np.isnan(run).any()
    assert run.mean() == pytest.approx(target, rel=0.2)

"""The RDP maths against Opacus's published value, Opacus's analysis and Google's dp-accounting."""

import logging
import math

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as google_rdp
from oracles import dp_accounting_epsilon

from fedretrain.privacy.rdp import (
    ORDERS,
    SampledGaussian,
    epsilon,
    epsilon_from_rdp,
    merge,
    noise_multiplier_for,
    rdp,
    rdp_per_step,
)

# Opacus's tests (tests/accountants_test.py): sigma 1.5, q 0.04, 2,250 steps at delta 1e-5.
PUBLISHED = (SampledGaussian(1.5, 0.04, 2250), 1e-5, 7.32911117143)


def test_published_opacus_value() -> None:
    mechanism, delta, expected = PUBLISHED
    assert epsilon([mechanism], delta) == pytest.approx(expected, rel=1e-6)


GRID = [(q, s) for q in (1e-4, 0.004, 0.04, 0.3) for s in (0.7, 1.0, 1.5, 4.0)]


@pytest.mark.parametrize(("q", "sigma"), GRID)
def test_rdp_per_order_against_dp_accounting(q: float, sigma: float) -> None:
    logging.disable(logging.WARNING)  # dp_accounting logs orders it gives up on
    try:
        theirs = google_rdp._compute_rdp_poisson_subsampled_gaussian(q, sigma, ORDERS)
    finally:
        logging.disable(logging.NOTSET)
    ours = rdp_per_step(sigma, q)
    integer = np.array([float(a).is_integer() for a in ORDERS])
    # Integer orders: the same finite sum, so the same value.
    np.testing.assert_allclose(ours[integer], theirs[integer], rtol=1e-9, atol=1e-300)
    # Fractional orders: dp_accounting adds the series' terms in absolute value (an upper
    # bound); ours sums the signed series, as Opacus does. Never above theirs (up to rounding:
    # at q = 1e-4 the RDP is ~1e-10, the log of 1 + 1e-10), never negative.
    assert np.all(ours[~integer] <= theirs[~integer] * (1 + 1e-6))
    assert np.all(ours >= 0)


@pytest.mark.parametrize(("q", "sigma"), [(0.01, 0.8), (0.04, 1.5), (0.2, 3.0)])
def test_rdp_per_order_equals_opacus_analysis(q: float, sigma: float) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp

    theirs = compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS))
    np.testing.assert_allclose(rdp_per_step(sigma, q), theirs, rtol=1e-8)


def test_edge_cases() -> None:
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([SampledGaussian(1.0, 0.0, 100)], 1e-5) == 0.0
    assert epsilon([SampledGaussian(0.0, 0.1, 1)], 1e-5) == math.inf
    # q = 1: the plain Gaussian mechanism, RDP alpha / (2 sigma^2).
    np.testing.assert_allclose(rdp_per_step(2.0, 1.0), np.array(ORDERS) / 8)
    assert epsilon_from_rdp(np.full(len(ORDERS), np.inf), 1e-5)[0] == math.inf
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rdp(np.zeros(len(ORDERS)), 1.5)
    with pytest.raises(ValueError, match="sample_rate"):
        SampledGaussian(1.0, 1.5, 1)
    # extreme corners: tiny q with huge sigma (cancellation), large q with small sigma
    for q, sigma in [(1e-7, 1000.0), (1e-3, 200.0), (0.5, 0.3), (0.99, 0.5)]:
        values = rdp_per_step(sigma, q)
        assert np.all(np.isfinite(values)) and np.all(values >= 0)


def test_composition_adds_rdp_and_merging_changes_nothing() -> None:
    a, b = SampledGaussian(1.1, 0.01, 300), SampledGaussian(0.9, 0.02, 100)
    np.testing.assert_allclose(rdp([a, b, a]), 2 * rdp([a]) + rdp([b]))
    merged = merge([a, b, a])
    assert merged == (SampledGaussian(1.1, 0.01, 600), b)
    assert epsilon(merged, 1e-5) == pytest.approx(epsilon([a, b, a], 1e-5), rel=1e-12)


@pytest.mark.parametrize(("target", "q", "steps"), [(1.0, 0.01, 900), (3.0, 0.0111, 270)])
def test_noise_multiplier_meets_the_target_from_below(target: float, q: float, steps: int) -> None:
    sigma = noise_multiplier_for(target, 1e-5, q, steps)
    reached = epsilon([SampledGaussian(sigma, q, steps)], 1e-5)
    assert target - 0.01 <= reached <= target
    assert dp_accounting_epsilon([SampledGaussian(sigma, q, steps)], 1e-5) <= target * 1.001
    # Less noise would overshoot: sigma is (close to) the smallest that fits.
    assert epsilon([SampledGaussian(sigma * 0.98, q, steps)], 1e-5) > target


def test_noise_multiplier_with_a_prior_history_and_unreachable_targets() -> None:
    prior = [SampledGaussian(1.0, 0.01, 1000)]
    spent = epsilon(prior, 1e-5)
    sigma = noise_multiplier_for(spent + 1.0, 1e-5, 0.01, 500, prior=prior)
    assert epsilon([*prior, SampledGaussian(sigma, 0.01, 500)], 1e-5) <= spent + 1.0
    with pytest.raises(ValueError, match="no noise multiplier"):
        noise_multiplier_for(spent * 0.5, 1e-5, 0.01, 500, prior=prior)

"""Rényi DP of the Poisson-subsampled Gaussian mechanism: the maths under the privacy ledger.

Pure numpy and scipy, no Opacus: a composition is a list of :class:`SampledGaussian` entries
(noise multiplier σ, sample rate q, steps), its RDP is the sum of each entry's per-step RDP
times its steps (Mironov, Talwar and Zhang 2019, "Rényi Differential Privacy of the Sampled
Gaussian Mechanism", section 3.3), and ε at a given δ follows from the conversion of Balle et
al. 2020 ("Hypothesis testing interpretations and Rényi DP", theorem 21), minimised over the
orders. The formulas, orders and conversion are those of Opacus's ``RDPAccountant`` and Google's
``dp_accounting.rdp.RdpAccountant`` (whose order set :data:`ORDERS` is), so the published
values of both reproduce here; the implementation is ours, vectorised over the series terms.

>>> epsilon([SampledGaussian(noise_multiplier=1.5, sample_rate=0.04, steps=2250)], delta=1e-5)
7.329111...
>>> sigma = noise_multiplier_for(2.0, 1e-5, sample_rate=0.01, steps=1000)
>>> 1.9 < epsilon([SampledGaussian(sigma, 0.01, 1000)], 1e-5) <= 2.0
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

# The orders of dp_accounting's RdpAccountant; a superset of Opacus's RDPAccountant defaults.
ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(11, 64)),
    128.0,
    256.0,
    512.0,
    1024.0,
)

_MAX_SIGMA = 1e6  # beyond this a target ε is unreachable for any sensible step count


@dataclass(frozen=True)
class SampledGaussian:
    """``steps`` applications of the Gaussian mechanism on a Poisson sample of rate ``q``.

    Parameters
    ----------
    noise_multiplier : float
        σ, the noise standard deviation divided by the L2 sensitivity (the clipping norm).
        0 means no noise, hence no privacy (ε = ∞).
    sample_rate : float
        q in [0, 1], the probability that each record joins a step's batch.
    steps : int
        How many times the mechanism ran.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier={self.noise_multiplier}: must be finite, >= 0")
        if not 0 <= self.sample_rate <= 1:
            raise ValueError(f"sample_rate={self.sample_rate}: must lie in [0, 1]")
        if self.steps < 0 or int(self.steps) != self.steps:
            raise ValueError(f"steps={self.steps}: must be a whole number >= 0")


def merge(composition: Iterable[SampledGaussian]) -> tuple[SampledGaussian, ...]:
    """Sum the steps of entries with equal (σ, q), in order of first appearance.

    RDP composes additively, so merging changes no ε; it keeps a long-lived ledger short.

    >>> merge([SampledGaussian(1.0, 0.1, 5), SampledGaussian(2.0, 0.1, 1),
    ...        SampledGaussian(1.0, 0.1, 3)])  # doctest: +NORMALIZE_WHITESPACE
    (SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=8),
     SampledGaussian(noise_multiplier=2.0, sample_rate=0.1, steps=1))
    """
    steps: dict[tuple[float, float], int] = {}
    for entry in composition:
        key = (float(entry.noise_multiplier), float(entry.sample_rate))
        steps[key] = steps.get(key, 0) + int(entry.steps)
    return tuple(SampledGaussian(s, q, n) for (s, q), n in steps.items() if n > 0)


def rdp_per_step(
    noise_multiplier: float, sample_rate: float, orders: Sequence[float] = ORDERS
) -> np.ndarray:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism at each order.

    Add-or-remove-one neighbouring, the relation Opacus and dp_accounting use for Poisson
    sampling. Entries can be ``inf`` (σ = 0). Cached: a site checks and records the same
    (σ, q) every round, and each series costs milliseconds.
    """
    orders_key = tuple(float(a) for a in orders)
    return _rdp_per_step(float(noise_multiplier), float(sample_rate), orders_key).copy()


@functools.lru_cache(maxsize=256)
def _rdp_per_step(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    alphas = np.asarray(orders, dtype=np.float64)
    if q == 0:
        return np.zeros_like(alphas)
    if sigma == 0:
        return np.full_like(alphas, np.inf)
    if q == 1:
        return alphas / (2 * sigma**2)
    return np.array([_log_a(q, sigma, float(a)) / (a - 1) for a in alphas])


def rdp(composition: Iterable[SampledGaussian], orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP of a whole composition at each order: the sum over its entries."""
    total = np.zeros(len(orders))
    for entry in composition:
        if entry.steps:
            total += entry.steps * rdp_per_step(entry.noise_multiplier, entry.sample_rate, orders)
    return total


def epsilon_from_rdp(
    rdp_values: np.ndarray, delta: float, orders: Sequence[float] = ORDERS
) -> tuple[float, float]:
    """(ε, optimal order) at ``delta`` for RDP values given at ``orders``.

    ``ε = min_α rdp(α) - (log δ + log α)/(α - 1) + log((α - 1)/α)`` (Balle et al. 2020), floored
    at 0. ``inf`` when every order is infinite.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta}: must lie in (0, 1)")
    alphas = np.asarray(orders, dtype=np.float64)
    values = np.asarray(rdp_values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        eps = values - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log1p(-1 / alphas)
    if np.isnan(eps).all() or np.isinf(eps).all():
        return math.inf, math.nan
    best = int(np.nanargmin(eps))
    return max(0.0, float(eps[best])), float(alphas[best])


def epsilon(
    composition: Iterable[SampledGaussian], delta: float, orders: Sequence[float] = ORDERS
) -> float:
    """ε at ``delta`` of a composition (0 for an empty one)."""
    entries = list(composition)
    if not any(e.steps and e.sample_rate for e in entries):
        return 0.0
    return epsilon_from_rdp(rdp(entries, orders), delta, orders)[0]


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Iterable[SampledGaussian] = (),
    tolerance: float = 0.01,
) -> float:
    """The smallest σ (up to ``tolerance`` in ε) with ε(prior + σ steps) ≤ ``target_epsilon``.

    Bisection on σ, returning the upper end, so the result never overshoots the target. With
    ``prior`` the target covers that history as well (a lifetime budget); without it the new
    steps alone (a per-cycle target).

    Raises
    ------
    ValueError
        When no σ up to 1e6 reaches the target, e.g. because ``prior`` already exceeds it.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon={target_epsilon}: must be positive")
    before = rdp(prior)

    def eps(sigma: float) -> float:
        total = before + steps * rdp_per_step(sigma, sample_rate)
        return epsilon_from_rdp(total, delta)[0]

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > _MAX_SIGMA:
            raise ValueError(
                f"no noise multiplier up to {_MAX_SIGMA:g} keeps ε <= {target_epsilon} at "
                f"δ={delta} for {steps} steps at q={sample_rate}"
            )
    eps_high = eps(high)
    while target_epsilon - eps_high > tolerance and high - low > 1e-9 * high:
        mid = (low + high) / 2
        eps_mid = eps(mid)
        if eps_mid <= target_epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


# ----------------------------------------------------------------------------- log A_alpha


def _log_a(q: float, sigma: float, alpha: float) -> float:
    """log A_α of Mironov et al. 2019, section 3.3, for 0 < q < 1 and σ > 0."""
    if float(alpha).is_integer():
        return _log_a_int(q, sigma, int(alpha))
    return _log_a_frac(q, sigma, alpha)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    # A_α = Σ_i C(α, i) q^i (1-q)^(α-i) exp((i² - i) / (2σ²)), a sum of positive terms.
    i = np.arange(alpha + 1, dtype=np.float64)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(alpha - i + 1)
    terms = (
        log_binom + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    )
    return float(special.logsumexp(terms))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # Two integrals over (-inf, z0] and [z0, inf) expanded as binomial series in i; the
    # coefficients C(α, i) change sign once i > α, so the sums are signed. Terms are added
    # until both fall below exp(-30), as in the reference implementations.
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    count = max(64, 2 * int(alpha) + 2)
    while True:
        i = np.arange(count, dtype=np.float64)
        j = alpha - i
        coef = special.binom(alpha, i)
        with np.errstate(divide="ignore"):
            log_coef = np.log(np.abs(coef))
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        small = np.nonzero(np.maximum(log_s0, log_s1) < -30)[0]
        if len(small):
            stop = int(small[0]) + 1  # the reference loops include the first small term
            break
        count *= 2
    signs = np.sign(coef[:stop])
    log_a0 = _signed_logsumexp(log_s0[:stop], signs)
    log_a1 = _signed_logsumexp(log_s1[:stop], signs)
    log_a = float(np.logaddexp(log_a0, log_a1))
    if math.isfinite(log_a) and log_a >= 0:  # A_α >= 1 always; less means lost precision
        return log_a
    # Fall back on the bound with every term taken positive (dp_accounting's choice): never
    # below the exact value, so the ledger errs towards overstating ε, never understating it.
    return float(special.logsumexp(np.concatenate([log_s0[:stop], log_s1[:stop]])))


def _signed_logsumexp(log_terms: np.ndarray, signs: np.ndarray) -> float:
    top = float(np.max(log_terms))
    total = float(np.sum(signs * np.exp(log_terms - top)))
    return top + math.log(total) if total > 0 else -math.inf


def _log_erfc(x: np.ndarray) -> np.ndarray:
    return np.asarray(math.log(2) + special.log_ndtr(-x * math.sqrt(2)))

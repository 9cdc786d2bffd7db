"""Calibration maths: from a target false-alarm run length to the levels and thresholds of tests.

A detector is configured by ``arl``, the mean number of stationary periods between false alarms.
Its per-period family-wise false-alarm probability is ``1 / arl``, and a detector that runs several
tests each period splits that budget among them (Bonferroni, valid whatever their dependence).
Sequential detectors (CUSUM, Page-Hinkley) get a per-stream run length instead: false-alarm rates
add up, so ``m`` streams of run length ``m * arl`` give the detector run length ``arl``.

>>> alpha = period_alpha(5000)
>>> alpha
0.0002
>>> split_alpha(alpha, sites=10, global_share=0.5)
(0.0001, 1e-05)
>>> h = cusum_threshold(5000, k=0.5)
>>> round(h, 3), round(siegmund_arl(h, k=0.5))
(6.662, 5000)
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import optimize, special

# Siegmund's correction for the overshoot of a Gaussian random walk over the boundary.
SIEGMUND_OVERSHOOT = 1.166


def period_alpha(arl: float) -> float:
    """The per-period false-alarm probability of a target mean run length ``arl`` (in periods).

    >>> period_alpha(20)
    0.05
    """
    if not arl >= 1:
        raise ValueError(f"arl={arl}: a mean run length in periods, >= 1")
    return 1.0 / arl


def split_alpha(alpha: float, sites: int, global_share: float = 0.5) -> tuple[float, float]:
    """Weighted Bonferroni: ``(pooled level, level of each site)`` for the pooled and site tests.

    The pooled test gets ``global_share`` of the budget, because drift at every site shows there
    first and soonest; the sites share the rest equally. With no site, the pooled test gets all.

    >>> split_alpha(0.01, sites=4, global_share=0.2)
    (0.002, 0.002)
    >>> split_alpha(0.01, sites=0)
    (0.01, 0.0)
    """
    if not 0 < global_share < 1:
        raise ValueError(f"global_share={global_share}: must lie in (0, 1)")
    if sites < 0:
        raise ValueError(f"sites={sites}: must be >= 0")
    if sites == 0:
        return alpha, 0.0
    return alpha * global_share, alpha * (1 - global_share) / sites


def split_arl(arl: float, sites: int, global_share: float = 0.5) -> tuple[float, float]:
    """Run lengths ``(pooled stream, each site stream)`` whose false-alarm rates add to ``1/arl``.

    >>> split_arl(100, sites=4, global_share=0.5)
    (200.0, 800.0)
    """
    pooled, site = split_alpha(period_alpha(arl), sites, global_share)
    return 1.0 / pooled, (1.0 / site if site else float("inf"))


def _log_siegmund(h: float, k: float) -> float:
    """log of the in-control ARL, stable for large ``2kb`` (where the ARL overflows a float)."""
    x = 2.0 * k * (h + SIEGMUND_OVERSHOOT)
    return float(x + np.log1p(-(x + 1.0) * np.exp(-x)) - np.log(2.0 * k * k))


def siegmund_arl(h: float, k: float, shift: float = 0.0) -> float:
    """Siegmund's approximation of a one-sided CUSUM's average run length.

    The CUSUM ``S_t = max(0, S_{t-1} + z_t - k)`` alarms at ``S_t > h``; ``z_t`` are independent
    N(``shift``, 1). With ``d = shift - k`` and ``b = h + 1.166``,
    ``ARL = (exp(-2 d b) + 2 d b - 1) / (2 d^2)``; in control (``shift = 0``) that is
    ``(exp(2kb) - 2kb - 1) / (2k^2)``, and ``b^2`` at ``d = 0``.

    >>> round(siegmund_arl(4.0, 0.5), 1)
    338.1
    >>> round(siegmund_arl(4.0, 0.5, shift=1.0), 2)
    8.34
    """
    if h < 0:
        raise ValueError(f"h={h}: a CUSUM threshold, >= 0")
    b = h + SIEGMUND_OVERSHOOT
    d = shift - k
    if abs(d) < 1e-12:
        return b * b
    return float((np.expm1(-2 * d * b) + 2 * d * b) / (2 * d * d))


def cusum_threshold(arl: float, k: float = 0.5) -> float:
    """The threshold ``h`` whose in-control ARL (Siegmund) is ``arl``; the inverse of the above.

    Run lengths below the ARL at ``h = 0`` (about 2 periods for ``k = 0.5``) cannot be reached
    by a positive threshold: those return 0.

    >>> round(cusum_threshold(338.1, 0.5), 3)
    4.0
    """
    if not k > 0:
        raise ValueError(f"k={k}: the CUSUM reference value must be > 0")
    if not arl >= 1:
        raise ValueError(f"arl={arl}: a mean run length in periods, >= 1")
    target = np.log(arl)
    if _log_siegmund(0.0, k) >= target:
        return 0.0
    hi = 1.0
    while _log_siegmund(hi, k) < target:
        hi *= 2.0
    return float(optimize.brentq(lambda h: _log_siegmund(h, k) - target, 0.0, hi, xtol=1e-10))


def _quadrature(points: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights for the expectation over one standard normal."""
    nodes, weights = hermegauss(points)
    return nodes, weights / np.sqrt(2 * np.pi)


def joint_tail(c: np.ndarray | float, rho: np.ndarray | float, k: int) -> np.ndarray:
    """``P(Z_1 > c, ..., Z_k > c)`` for standard normals with common correlation ``rho >= 0``.

    Such ``Z`` are ``sqrt(rho) W + sqrt(1 - rho) E_i`` with ``W`` shared: the probability is
    ``E_W[Phi((sqrt(rho) W - c) / sqrt(1 - rho))^k]``, here by 160-point Gauss-Hermite quadrature.

    >>> float(np.round(joint_tail(1.0, 0.0, 2), 6)) == round(float(special.ndtr(-1.0)) ** 2, 6)
    True
    """
    c_arr, rho_arr = np.broadcast_arrays(np.asarray(c, float), np.asarray(rho, float))
    if (rho_arr < 0).any() or (rho_arr > 1).any():
        raise ValueError("correlation must lie in [0, 1]")
    return _joint_tail(c_arr, rho_arr, k, *_quadrature())


def _joint_tail(
    c: np.ndarray, rho: np.ndarray, k: int, nodes: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    r = np.minimum(rho, 1 - 1e-12)[..., None]
    inner = special.ndtr((np.sqrt(r) * nodes - c[..., None]) / np.sqrt(1 - r))
    return np.asarray((weights * inner**k).sum(axis=-1))


def confirm_level(
    alpha: np.ndarray | float, confirm: int, rho: np.ndarray | float = 0.0
) -> np.ndarray:
    """The level ``a'`` at which ``confirm`` consecutive rejections have probability ``alpha``.

    Under independence ``a' = alpha ** (1 / confirm)``. Tests against one fixed reference are
    positively correlated (they share its noise): for a current sample of ``n`` and a reference
    of ``m``, consecutive z-statistics have correlation about ``n / (n + m)``, which makes runs of
    rejections likelier, so ``a'`` is solved for that correlation (normal approximation).

    >>> round(float(confirm_level(1e-4, 2)), 12)
    0.01
    >>> bool(confirm_level(1e-4, 2, rho=0.25) < 0.01)
    True
    >>> float(confirm_level(1e-4, 1, rho=0.25))
    0.0001
    """
    alpha_arr, rho_arr = np.broadcast_arrays(np.asarray(alpha, float), np.asarray(rho, float))
    if confirm < 1:
        raise ValueError(f"confirm={confirm}: must be >= 1")
    if not ((alpha_arr > 0) & (alpha_arr < 1)).all():
        raise ValueError("alpha must lie in (0, 1)")
    if confirm == 1:
        return alpha_arr.copy()
    # Bracket: positive dependence only makes joint rejections likelier (Slepian), so the cut c
    # lies between the independent one and the single-test one; bisect on log probability.
    lo = special.ndtri(1 - alpha_arr ** (1.0 / confirm))
    hi = special.ndtri(1 - alpha_arr)
    if (rho_arr < 0).any() or (rho_arr > 1).any():
        raise ValueError("correlation must lie in [0, 1]")
    log_alpha = np.log(alpha_arr)
    nodes, weights = _quadrature()
    for _ in range(50):
        mid = (lo + hi) / 2
        too_likely = np.log(_joint_tail(mid, rho_arr, confirm, nodes, weights)) > log_alpha
        lo = np.where(too_likely, mid, lo)
        hi = np.where(too_likely, hi, mid)
    return np.asarray(special.ndtr(-hi))

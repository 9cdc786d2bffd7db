"""Two-sample homogeneity tests and effect sizes for binned counts, vectorised over tables.

Every function takes ``current`` and ``reference`` counts of shape ``(..., bins)`` (any leading
shape: streams, features) and treats each last-axis pair as one 2 x bins contingency table.

Sparse bins are merged with their neighbours before testing so that every expected count is at
least ``min_expected``: the chi-square approximation is then honest far into its tail, which
matters because a detector with a long run length tests at levels of 1e-6 and below.

>>> import numpy as np
>>> cur = np.array([30, 40, 30, 0])
>>> ref = np.array([100, 100, 100, 0])
>>> stat, dof, p = chi2_homogeneity(cur, ref)
>>> round(float(stat), 3), int(dof), round(float(p), 4)
(1.465, 2, 0.4807)
>>> round(float(psi(cur, ref)), 4), round(float(js_divergence(cur, ref)), 4)
(0.0221, 0.0035)
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


class HomogeneityTest(str, Enum):
    """Pearson's chi-square, or the likelihood-ratio G-test (same null distribution)."""

    CHI2 = "chi2"
    G = "g"


def merge_bins(
    current: ArrayLike, reference: ArrayLike, min_expected: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins, left to right, until every expected count reaches ``min_expected``.

    A group closes once its row total ``r`` gives ``r * min(n_cur, n_ref) / N >= min_expected``
    (the smaller sample's expected count, hence both); a last group that falls short joins the
    one before. Bins empty in both samples add nothing. Returns merged counts of the input shape:
    the groups first, zero-padded.

    >>> cur, ref = merge_bins(np.array([1, 8, 0, 9, 1]), np.array([2, 20, 0, 20, 3]))
    >>> cur.tolist(), ref.tolist()
    ([9, 10, 0, 0, 0], [22, 23, 0, 0, 0])
    """
    cur = np.asarray(current)
    ref = np.asarray(reference)
    if cur.shape != ref.shape:
        raise ValueError(f"current {cur.shape} and reference {ref.shape} shapes differ")
    shape, bins = cur.shape, cur.shape[-1]
    cur2, ref2 = cur.reshape(-1, bins), ref.reshape(-1, bins)
    labels = _merge_labels(cur2, ref2, min_expected)
    return _sum_groups(cur2, labels).reshape(shape), _sum_groups(ref2, labels).reshape(shape)


def _merge_labels(cur2: np.ndarray, ref2: np.ndarray, min_expected: float) -> np.ndarray:
    """The group of each bin of ``(tables, bins)`` counts, as :func:`merge_bins` merges them."""
    bins = cur2.shape[-1]
    n_cur, n_ref = cur2.sum(axis=1), ref2.sum(axis=1)
    smaller = np.minimum(n_cur, n_ref).astype(float)
    with np.errstate(divide="ignore"):
        need = np.where(smaller > 0, min_expected * (n_cur + n_ref) / smaller, np.inf)
    labels = np.zeros(cur2.shape, dtype=np.int64)
    group = np.zeros(len(cur2), dtype=np.int64)
    acc = np.zeros(len(cur2))
    for j in range(bins):
        labels[:, j] = group
        acc = acc + cur2[:, j] + ref2[:, j]
        closed = acc >= need
        group = group + closed
        acc = np.where(closed, 0.0, acc)
    # An unfinished last group (counts after the last closed one) joins the group before it.
    short = (acc > 0) & (group > 0)
    return np.where(short[:, None] & (labels == group[:, None]), labels - 1, labels)


def _sum_groups(counts2: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts summed by group, groups first, zero-padded to the input shape."""
    rows = np.arange(len(counts2))
    merged = np.zeros_like(counts2)
    for j in range(counts2.shape[-1]):
        np.add.at(merged, (rows, labels[:, j]), counts2[:, j])
    return merged


def chi2_homogeneity(
    current: ArrayLike,
    reference: ArrayLike,
    min_expected: float = 5.0,
    test: HomogeneityTest | str = HomogeneityTest.CHI2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(statistic, dof, p_value)`` of the two-sample test on the merged 2 x groups table.

    Without continuity correction, as ``scipy.stats.chi2_contingency(..., correction=False)``.
    A table left with one group (a constant feature, or too few samples to test) has statistic
    0, dof 0 and p-value 1: it cannot alarm.
    """
    kind = HomogeneityTest(test)
    cur, ref = merge_bins(current, reference, min_expected)
    cur, ref = cur.astype(float), ref.astype(float)
    n_cur, n_ref = cur.sum(axis=-1, keepdims=True), ref.sum(axis=-1, keepdims=True)
    total = n_cur + n_ref
    rows = cur + ref
    used = rows > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        e_cur = rows * n_cur / total
        e_ref = rows * n_ref / total
        if kind is HomogeneityTest.CHI2:
            terms = (cur - e_cur) ** 2 / e_cur + (ref - e_ref) ** 2 / e_ref
        else:
            terms = 2 * (_xlogy_ratio(cur, e_cur) + _xlogy_ratio(ref, e_ref))
    statistic = np.where(used, np.nan_to_num(terms), 0.0).sum(axis=-1)
    dof = used.sum(axis=-1) - 1
    testable = (dof > 0) & (n_cur[..., 0] > 0) & (n_ref[..., 0] > 0)
    statistic = np.where(testable, np.maximum(statistic, 0.0), 0.0)
    dof = np.where(testable, dof, 0)
    p_value = np.where(testable, stats.chi2.sf(statistic, np.maximum(dof, 1)), 1.0)
    return statistic, dof, p_value


def wald_homogeneity(
    current: ArrayLike,
    reference: ArrayLike,
    current_var: ArrayLike,
    reference_var: ArrayLike,
    min_expected: float = 5.0,
    min_signal: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`chi2_homogeneity` for counts that carry independent Gaussian noise of known variance.

    ``current_var`` and ``reference_var`` are the noise variances of one bin of each table
    (shape ``current.shape[:-1]``, or broadcastable to it). Bins are merged as by
    :func:`merge_bins`; a group of ``w`` bins carries ``w`` times the variance. With the
    proportions ``c / N_c`` and ``r / N_r`` taken over the noisy totals, their difference ``d``
    has, under one common distribution ``p`` and to first order, the covariance

    ``(1/N_c + 1/N_r) (diag p - p p') + (v_c/N_c^2 + v_r/N_r^2) (diag w - p w' - w p' + W p p')``

    (sampling, then noise; ``W`` is the total of ``w``), and the Wald statistic ``d' S^+ d`` is
    chi-square with groups - 1 degrees of freedom. Without noise it *is* Pearson's statistic
    on the merged table. A table whose total lies within ``min_signal`` noise standard
    deviations of zero is not tested (statistic 0, p-value 1): the ratio needs a total well
    above its noise.

    >>> cur, ref = np.array([30.0, 40.0, 30.0]), np.array([100.0, 100.0, 100.0])
    >>> bool(np.isclose(wald_homogeneity(cur, ref, 0.0, 0.0)[0], chi2_homogeneity(cur, ref)[0]))
    True
    >>> stat, dof, p = wald_homogeneity(cur, ref, current_var=25.0, reference_var=75.0)
    >>> round(float(stat), 3), int(dof)
    (0.845, 2)
    """
    cur, ref = np.asarray(current, dtype=float), np.asarray(reference, dtype=float)
    if cur.shape != ref.shape:
        raise ValueError(f"current {cur.shape} and reference {ref.shape} shapes differ")
    lead, bins = cur.shape[:-1], cur.shape[-1]
    cur2, ref2 = cur.reshape(-1, bins), ref.reshape(-1, bins)
    v_cur = np.broadcast_to(np.asarray(current_var, dtype=float), lead).reshape(-1)
    v_ref = np.broadcast_to(np.asarray(reference_var, dtype=float), lead).reshape(-1)
    labels = _merge_labels(cur2, ref2, min_expected)
    merged_cur, merged_ref = _sum_groups(cur2, labels), _sum_groups(ref2, labels)
    width = _sum_groups(np.ones_like(cur2), labels)
    used = merged_cur + merged_ref > 0
    merged_cur, merged_ref = np.where(used, merged_cur, 0.0), np.where(used, merged_ref, 0.0)
    width = np.where(used, width, 0.0)
    n_cur, n_ref, spread = merged_cur.sum(axis=1), merged_ref.sum(axis=1), width.sum(axis=1)
    groups = used.sum(axis=1)
    testable = (
        (groups >= 2)
        & (n_cur > 0)
        & (n_ref > 0)
        & (n_cur > min_signal * np.sqrt(v_cur * spread))
        & (n_ref > min_signal * np.sqrt(v_ref * spread))
    )
    n_c, n_r = np.where(testable, n_cur, 1.0), np.where(testable, n_ref, 1.0)
    p = (merged_cur + merged_ref) / (n_c + n_r)[:, None]
    diff = merged_cur / n_c[:, None] - merged_ref / n_r[:, None]
    # The proportions sum to one on both sides: drop the last used group (any one would do).
    last = bins - 1 - np.argmax(used[:, ::-1], axis=1)
    keep = used & (np.arange(bins) != last[:, None]) & testable[:, None]
    eye = np.eye(bins)
    outer = p[:, :, None] * p[:, None, :]
    p_w = p[:, :, None] * width[:, None, :]
    sampling = (1 / n_c + 1 / n_r)[:, None, None] * (p[:, :, None] * eye - outer)
    noise = width[:, :, None] * eye - p_w - p_w.transpose(0, 2, 1) + spread[:, None, None] * outer
    cov = sampling + (v_cur / n_c**2 + v_ref / n_r**2)[:, None, None] * noise
    cov = np.where(keep[:, :, None] & keep[:, None, :], cov, eye)
    d = np.where(keep, diff, 0.0)
    statistic = np.einsum("ti,ti->t", d, np.linalg.solve(cov, d[..., None])[..., 0])
    statistic = np.where(testable, np.maximum(statistic, 0.0), 0.0)
    dof = np.where(testable, groups - 1, 0)
    p_value = np.where(testable, stats.chi2.sf(statistic, np.maximum(dof, 1)), 1.0)
    return statistic.reshape(lead), dof.reshape(lead), p_value.reshape(lead)


def _xlogy_ratio(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``o * log(o / e)`` with ``0 log 0 = 0``."""
    safe = np.where(observed > 0, observed / np.where(expected > 0, expected, 1.0), 1.0)
    return np.where(observed > 0, observed * np.log(safe), 0.0)


def psi(current: ArrayLike, reference: ArrayLike, pseudocount: float = 0.5) -> np.ndarray:
    """Population stability index ``sum (c - r) ln(c / r)`` of the bin proportions.

    Half a count is added to every bin so that empty bins stay finite. Rules of thumb read
    < 0.1 as stable and > 0.25 as a major shift; here it is an effect size, never a threshold.
    """
    c = np.asarray(current, float) + pseudocount
    r = np.asarray(reference, float) + pseudocount
    c = c / c.sum(axis=-1, keepdims=True)
    r = r / r.sum(axis=-1, keepdims=True)
    return np.asarray(((c - r) * np.log(c / r)).sum(axis=-1))


def js_divergence(current: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """Jensen-Shannon divergence of the bin proportions, in bits (0 = same, 1 = disjoint)."""
    c = np.asarray(current, float)
    r = np.asarray(reference, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.nan_to_num(c / c.sum(axis=-1, keepdims=True))
        r = np.nan_to_num(r / r.sum(axis=-1, keepdims=True))
    m = (c + r) / 2
    half = _xlogy_ratio(c, m).sum(axis=-1) + _xlogy_ratio(r, m).sum(axis=-1)
    return np.asarray(half / (2 * np.log(2)))

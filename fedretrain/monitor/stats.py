"""Summable statistics of a site's window: the only thing that leaves a site for monitoring.

Every field is a count or a sum, so the statistics of several sites add up exactly to those of
their pooled data: the server sees the global and the per-site picture without raw data, and the
same sums stay compatible with secure aggregation and Gaussian noise.

>>> import numpy as np
>>> edges = HistogramEdges(np.array([[0.5], [0.5]]))  # 2 features, 2 bins each
>>> x = np.array([[0.0, 1.0], [1.0, 1.0], [0.2, 0.0]])
>>> y = np.array([0, 1, 1])
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> s = window_stats(x, y, probs, losses=np.array([0.1, 0.2, 0.9]), edges=edges)
>>> s.n, s.errors, s.hist.tolist(), s.label_counts.tolist(), s.pred_counts.tolist()
(3, 1, [[2, 1], [1, 2]], [1, 2], [2, 1])
>>> (s + s).n, (s + s).confusion.tolist()
(6, [[2, 0], [2, 2]])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

# The order in which WindowStats travels as arrays (see to_arrays / from_arrays).
ARRAY_FIELDS = ("x_sum", "x_sq_sum", "hist", "label_counts", "pred_counts", "confusion")
SCALAR_FIELDS = ("n", "loss_sum", "maxprob_sum")


@dataclass(frozen=True)
class HistogramEdges:
    """Interior bin edges per feature, shared by every site so that counts add up.

    ``interior[f]`` holds the ``bins - 1`` interior edges of feature ``f``; the outer bins are
    open (``(-inf, e_0]`` and ``(e_last, inf)``), so every value falls in a bin.
    """

    interior: np.ndarray  # (num_features, bins - 1), non-decreasing along each row

    def __post_init__(self) -> None:
        if self.interior.ndim != 2:
            raise ValueError(
                f"interior edges must be 2-D (features, bins - 1), got {self.interior.shape}"
            )
        if not np.isfinite(self.interior).all():
            raise ValueError("histogram edges must be finite")
        if (np.diff(self.interior, axis=1) < 0).any():
            raise ValueError("histogram edges must be non-decreasing along each feature")

    @property
    def num_features(self) -> int:
        return int(self.interior.shape[0])

    @property
    def bins(self) -> int:
        return int(self.interior.shape[1]) + 1

    @classmethod
    def from_moments(
        cls, n: int, x_sum: np.ndarray, x_sq_sum: np.ndarray, bins: int = 8, width_sd: float = 1.5
    ) -> HistogramEdges:
        """Equal-width bins over mean +- ``width_sd`` standard deviations, per feature; the open
        outer bins catch the tails (1.5 sd leaves about 7% in each for normal or uniform data).

        The server knows only summable moments of the reference window, which is enough to
        place edges where the data lies. A constant feature gets all its edges at its value.
        """
        if n < 1:
            raise ValueError("edges need a reference window with at least one sample")
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        mean = x_sum / n
        sd = np.sqrt(np.maximum(x_sq_sum / n - mean**2, 0.0))
        steps = np.linspace(-width_sd, width_sd, bins - 1)
        return cls(mean[:, None] + sd[:, None] * steps[None, :])

    def counts(self, x: np.ndarray) -> np.ndarray:
        """Counts per feature and bin of the rows of ``x`` (shape ``(n, num_features)``)."""
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"data has {x.shape[1]} features, edges were made for {self.num_features}"
            )
        out = np.empty((self.num_features, self.bins), dtype=np.int64)
        for f in range(self.num_features):
            index = np.searchsorted(self.interior[f], x[:, f], side="left")
            out[f] = np.bincount(index, minlength=self.bins)
        return out


@dataclass(frozen=True)
class WindowStats:
    """Counts and sums over one window of one site (or several, summed).

    Features are the model inputs flattened to ``num_features`` columns. Rows of ``confusion``
    are true labels, columns predictions.
    """

    n: int
    x_sum: np.ndarray  # (num_features,)
    x_sq_sum: np.ndarray  # (num_features,)
    hist: np.ndarray  # (num_features, bins) counts on the shared edges
    label_counts: np.ndarray  # (num_classes,)
    pred_counts: np.ndarray  # (num_classes,)
    confusion: np.ndarray  # (num_classes, num_classes)
    loss_sum: float
    maxprob_sum: float

    def __add__(self, other: WindowStats) -> WindowStats:
        for name in ARRAY_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"cannot add statistics: {name} shapes {mine.shape} and {theirs.shape} differ"
                )
        return WindowStats(
            n=self.n + other.n,
            loss_sum=self.loss_sum + other.loss_sum,
            maxprob_sum=self.maxprob_sum + other.maxprob_sum,
            **{name: getattr(self, name) + getattr(other, name) for name in ARRAY_FIELDS},
        )

    @property
    def errors(self) -> int:
        """Misclassified samples: the confusion matrix off its diagonal."""
        return int(self.confusion.sum() - np.trace(self.confusion))

    @property
    def labelled(self) -> int:
        """Samples with a label (the confusion matrix counts only those)."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Correct over labelled, within [0, 1]: noisy counts (private statistics) can put
        the ratio a little outside it; NaN without labels."""
        if self.labelled <= 0:
            return float("nan")
        return float(np.clip(np.trace(self.confusion) / self.labelled, 0.0, 1.0))

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.labelled if self.labelled else float("nan")

    @property
    def mean_confidence(self) -> float:
        return self.maxprob_sum / self.n if self.n else float("nan")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for transport (scalars as 1-element arrays); see :meth:`from_arrays`."""
        out = {name: np.asarray(getattr(self, name)) for name in ARRAY_FIELDS}
        out["n"] = np.asarray([self.n], dtype=np.int64)
        out["loss_sum"] = np.asarray([self.loss_sum], dtype=np.float64)
        out["maxprob_sum"] = np.asarray([self.maxprob_sum], dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> WindowStats:
        """Rebuild from :meth:`to_arrays`; :func:`stats_problem` checks shapes and sanity."""
        missing = [k for k in (*ARRAY_FIELDS, *SCALAR_FIELDS) if k not in arrays]
        if missing:
            raise ValueError(f"statistics lack {missing}")
        scalars = {}
        for name in SCALAR_FIELDS:
            value = np.asarray(arrays[name]).reshape(-1)  # transport may make 0-d arrays 1-d
            if value.size != 1:
                raise ValueError(f"{name} must be one number, got {value.size}")
            scalars[name] = value[0]
        return cls(
            n=int(scalars["n"]),
            loss_sum=float(scalars["loss_sum"]),
            maxprob_sum=float(scalars["maxprob_sum"]),
            **{name: np.asarray(arrays[name]) for name in ARRAY_FIELDS},
        )

    @classmethod
    def zeros(cls, num_features: int, bins: int, num_classes: int) -> WindowStats:
        """The statistics of an empty window: the identity of ``+``."""
        return cls(
            n=0,
            x_sum=np.zeros(num_features),
            x_sq_sum=np.zeros(num_features),
            hist=np.zeros((num_features, bins), dtype=np.int64),
            label_counts=np.zeros(num_classes, dtype=np.int64),
            pred_counts=np.zeros(num_classes, dtype=np.int64),
            confusion=np.zeros((num_classes, num_classes), dtype=np.int64),
            loss_sum=0.0,
            maxprob_sum=0.0,
        )


def as_rows(x: np.ndarray) -> np.ndarray:
    """Inputs ``(n, ...)`` as float64 rows ``(n, num_features)``, also for an empty window.

    >>> as_rows(np.zeros((0, 1, 2, 2))).shape
    (0, 4)
    """
    return np.asarray(x, dtype=np.float64).reshape(len(x), int(np.prod(np.shape(x)[1:])))


def window_stats(
    x: np.ndarray,
    y: np.ndarray | None,
    probs: np.ndarray,
    losses: np.ndarray | None,
    edges: HistogramEdges,
) -> WindowStats:
    """Statistics of one window from its inputs, labels and the serving model's outputs.

    Parameters
    ----------
    x : np.ndarray
        Model inputs, ``(n, ...)``; flattened to ``(n, num_features)``.
    y : np.ndarray or None
        Labels, or None where the site has none yet (then no confusion, loss or label counts).
    probs : np.ndarray
        The model's class probabilities, ``(n, num_classes)``.
    losses : np.ndarray or None
        Per-sample loss (only with labels).
    edges : HistogramEdges
        The server's shared edges.
    """
    flat = as_rows(x)
    num_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    if y is None:
        label_counts = np.zeros(num_classes, dtype=np.int64)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        loss_sum = 0.0
    else:
        y = np.asarray(y, dtype=np.int64)
        label_counts = np.bincount(y, minlength=num_classes)
        confusion = np.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
        loss_sum = float(np.sum(losses)) if losses is not None else 0.0
    return WindowStats(
        n=len(flat),
        x_sum=flat.sum(axis=0),
        x_sq_sum=(flat**2).sum(axis=0),
        hist=edges.counts(flat),
        label_counts=label_counts,
        pred_counts=np.bincount(pred, minlength=num_classes),
        confusion=confusion,
        loss_sum=loss_sum,
        maxprob_sum=float(probs.max(axis=1).sum()),
    )


def stats_problem(stats: WindowStats, num_features: int, bins: int, num_classes: int) -> str | None:
    """Why a site's statistics must not be summed, or None when they are sound.

    Catches what would silently poison the global sums: wrong lengths, negative or fractional
    counts, non-finite sums, and counts that contradict each other.

    >>> good = WindowStats.zeros(num_features=2, bins=3, num_classes=2)
    >>> stats_problem(good, 2, 3, 2) is None
    True
    >>> stats_problem(WindowStats.zeros(2, 4, 2), 2, 3, 2)
    'hist has shape (2, 4), expected (2, 3)'
    """
    problem = shape_problem(stats, num_features, bins, num_classes)
    if problem is not None:
        return problem
    for name in ("loss_sum", "maxprob_sum"):
        if getattr(stats, name) < 0:
            return f"{name}={getattr(stats, name)} is negative"
    if stats.n < 0:
        return f"n={stats.n} is negative"
    for name in ("hist", "label_counts", "pred_counts", "confusion"):
        value = np.asarray(getattr(stats, name))
        if (value < 0).any():
            return f"{name} has negative counts"
        if not np.equal(np.mod(value, 1), 0).all():
            return f"{name} has fractional counts"
    if (np.asarray(stats.x_sq_sum) < 0).any():
        return "x_sq_sum has negative values"
    if num_features and (np.asarray(stats.hist).sum(axis=1) != stats.n).any():
        return f"hist rows do not each sum to n={stats.n}"
    if int(np.asarray(stats.pred_counts).sum()) != stats.n:
        return f"pred_counts sum to {int(np.asarray(stats.pred_counts).sum())}, not n={stats.n}"
    labelled = int(np.asarray(stats.confusion).sum())
    if labelled > stats.n:
        return f"the confusion matrix counts {labelled} samples, more than n={stats.n}"
    if (
        labelled
        and (np.asarray(stats.confusion).sum(axis=1) != np.asarray(stats.label_counts)).any()
    ):
        return "label_counts disagree with the confusion matrix's rows"
    if stats.maxprob_sum > stats.n * (1 + 1e-6):
        return f"maxprob_sum={stats.maxprob_sum} exceeds n={stats.n} (probabilities are at most 1)"
    return None


def shape_problem(stats: WindowStats, num_features: int, bins: int, num_classes: int) -> str | None:
    """Wrong lengths or non-finite values, or None: the checks every sender must pass, exact or
    noisy (:func:`fedretrain.monitor.private.noisy_stats_problem` adds the rest for noisy ones).
    """
    expected = {
        "x_sum": (num_features,),
        "x_sq_sum": (num_features,),
        "hist": (num_features, bins),
        "label_counts": (num_classes,),
        "pred_counts": (num_classes,),
        "confusion": (num_classes, num_classes),
    }
    for name, shape in expected.items():
        value = np.asarray(getattr(stats, name))
        if value.shape != shape:
            return f"{name} has shape {value.shape}, expected {shape}"
        if not np.isfinite(value).all():
            return f"{name} has non-finite values"
    for name in ("loss_sum", "maxprob_sum"):
        if not np.isfinite(getattr(stats, name)):
            return f"{name} is not finite"
    return None


@dataclass(frozen=True)
class PeriodStats:
    """One monitoring period: the accepted sites' statistics, keyed by site (partition) id."""

    period: int
    sites: Mapping[int, WindowStats] = field(default_factory=dict)

    @property
    def total(self) -> WindowStats:
        """The pooled statistics: the sum over sites."""
        return sum_stats(self.sites.values())


def sum_stats(items: Iterable[WindowStats]) -> WindowStats:
    items = list(items)
    if not items:
        raise ValueError("no statistics to sum")
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total

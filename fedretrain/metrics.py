"""Classification scores from confusion matrices.

Sites send confusion matrices, which add up exactly across sites; the server sums them and
computes the scores once. Averaging per-site F1 scores instead would weight a site with ten
samples like one with ten thousand, and macro scores do not average at all.

>>> import numpy as np
>>> cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), num_classes=2)
>>> cm.tolist()
[[1, 1], [0, 2]]
>>> round(scores(cm).accuracy, 2)
0.75
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class EvalResult:
    """Summable evaluation statistics: add them across sites, then compute scores.

    ``groups``: with groups of users (``task.dataset.group_column``, ``task.group_feature``),
    one confusion matrix per group, shape ``(groups, classes, classes)``, summing to
    ``confusion``; None without groups."""

    num_examples: int
    loss_sum: float
    confusion: np.ndarray
    groups: np.ndarray | None = None


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[i, j]`` of samples of true class ``i`` predicted as ``j``."""
    index = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def group_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, num_groups: int, num_classes: int
) -> np.ndarray:
    """One confusion matrix per group, ``(num_groups, num_classes, num_classes)``.

    >>> group_confusion(np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 2)[1]
    array([[0, 0],
           [1, 1]])
    """
    k = num_classes
    index = (np.asarray(groups, dtype=np.int64) * k + np.asarray(y_true, dtype=np.int64)) * k
    index += np.asarray(y_pred, dtype=np.int64)
    return np.bincount(index, minlength=num_groups * k * k).reshape(num_groups, k, k)


def group_recalls(confusions: np.ndarray) -> np.ndarray:
    """Each group's recall, macro-averaged over the classes the group has samples of (its
    balanced accuracy); NaN for a group with no samples.

    >>> cm = np.array([[[5, 0], [0, 5]], [[2, 2], [0, 0]]])  # group 1 has class 0 only
    >>> group_recalls(cm).tolist()
    [1.0, 0.5]
    """
    confusions = np.asarray(confusions, dtype=np.float64)
    actual = confusions.sum(axis=2)  # (groups, classes)
    hits = np.diagonal(confusions, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(actual > 0, hits / actual, np.nan)
    present = (actual > 0).sum(axis=1)
    sums = np.nansum(per_class, axis=1)
    return np.where(present > 0, sums / np.maximum(present, 1), np.nan)


def sum_confusion(matrices: Iterable[np.ndarray]) -> np.ndarray:
    """The global confusion matrix: the element-wise sum of the sites' matrices."""
    stacked = [np.asarray(m, dtype=np.int64) for m in matrices]
    if not stacked:
        raise ValueError("no confusion matrices to sum")
    shapes = {m.shape for m in stacked}
    if len(shapes) != 1:
        raise ValueError(f"confusion matrices disagree in shape: {sorted(shapes)}")
    return np.sum(stacked, axis=0)


@dataclass(frozen=True)
class Scores:
    accuracy: float
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def scores(cm: np.ndarray) -> Scores:
    """Accuracy and macro precision, recall and F1 of a confusion matrix.

    Follows scikit-learn's conventions with ``zero_division=0``: a class never predicted has
    precision 0, a class never present has recall 0, and macro averages run over every class of
    the task. F1 is the macro average of per-class F1, not the F1 of the macro averages.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return Scores(
        accuracy=float(tp.sum() / total) if total else 0.0,
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        f1=float(f1.mean()),
    )

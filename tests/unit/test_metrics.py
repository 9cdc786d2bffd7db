import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion

from fedretrain.metrics import confusion_matrix, scores, sum_confusion


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_sklearn_macro(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 6
    y_true = rng.integers(0, k, 300)
    # Biased predictions, and one class (5) never predicted: zero-division paths are exercised.
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, k - 1, 300))
    cm = confusion_matrix(y_true, y_pred, k)
    np.testing.assert_array_equal(cm, sk_confusion(y_true, y_pred, labels=range(k)))
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=range(k), average="macro", zero_division=0
    )
    s = scores(cm)
    assert s.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert (s.precision, s.recall, s.f1) == pytest.approx((p, r, f))


def test_class_absent_from_data_counts_in_macro_average_like_sklearn() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=range(3), average="macro", zero_division=0
    )
    s = scores(confusion_matrix(y_true, y_pred, 3))
    assert (s.precision, s.recall, s.f1) == pytest.approx((p, r, f))


def test_summed_site_matrices_equal_the_pooled_matrix_not_averaged_scores() -> None:
    rng = np.random.default_rng(7)
    sizes = [5, 50, 500]  # very unequal sites: averaging per-site scores would be wrong
    sites = [(rng.integers(0, 3, n), rng.integers(0, 3, n)) for n in sizes]
    total = sum_confusion(confusion_matrix(t, p, 3) for t, p in sites)
    pooled_true = np.concatenate([t for t, _ in sites])
    pooled_pred = np.concatenate([p for _, p in sites])
    _, _, f_pooled, _ = precision_recall_fscore_support(
        pooled_true, pooled_pred, average="macro", zero_division=0
    )
    assert scores(total).f1 == pytest.approx(f_pooled)


def test_sum_confusion_rejects_mismatched_shapes_and_empty_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        sum_confusion([np.zeros((2, 2)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match="no confusion"):
        sum_confusion([])

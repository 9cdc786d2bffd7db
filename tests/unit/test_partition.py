import numpy as np
import pytest

from fedretrain.partition import DirichletPartitioner, IidPartitioner

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def _label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each site's label mix and the global one."""
    k = labels.max() + 1
    global_mix = np.bincount(labels, minlength=k) / len(labels)
    mixes = [np.bincount(labels[p], minlength=k) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(m - global_mix).sum() for m in mixes]))


@pytest.mark.parametrize("n_sites", [1, 3, 7, 10])
def test_iid_covers_every_sample_once_with_near_equal_sizes(n_sites: int) -> None:
    parts = IidPartitioner().partition(LABELS, n_sites, np.random.default_rng(0))
    _assert_disjoint_cover(parts, len(LABELS))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_covers_every_sample_once_and_respects_min_size(alpha: float) -> None:
    partitioner = DirichletPartitioner(alpha=alpha, min_partition_size=20)
    parts = partitioner.partition(LABELS, 10, np.random.default_rng(1))
    _assert_disjoint_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 20


def test_small_alpha_skews_labels_and_large_alpha_approaches_iid() -> None:
    rng = np.random.default_rng
    skews = {
        a: _label_skew(DirichletPartitioner(alpha=a).partition(LABELS, 10, rng(2)), LABELS)
        for a in (0.1, 1.0, 100.0)
    }
    iid = _label_skew(IidPartitioner().partition(LABELS, 10, rng(2)), LABELS)
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[0.1] > 0.5  # most sites dominated by a few classes
    assert skews[100.0] < 0.15 and iid < 0.15


@pytest.mark.parametrize("partitioner", [IidPartitioner(), DirichletPartitioner(alpha=0.3)])
def test_same_seed_same_split_other_seed_other_split(partitioner) -> None:  # noqa: ANN001
    a = partitioner.partition(LABELS, 5, np.random.default_rng(42))
    b = partitioner.partition(LABELS, 5, np.random.default_rng(42))
    c = partitioner.partition(LABELS, 5, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_impossible_requests_fail_with_the_fix() -> None:
    with pytest.raises(ValueError, match="lower runtime.num_clients"):
        IidPartitioner().partition(LABELS[:5], 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha must be positive"):
        DirichletPartitioner(alpha=0.0)
    impossible = DirichletPartitioner(alpha=0.01, min_partition_size=99, max_attempts=5)
    with pytest.raises(ValueError, match="raise data.partitioner.alpha"):
        impossible.partition(LABELS, 10, np.random.default_rng(0))

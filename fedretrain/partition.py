"""Split one pool of samples across simulated sites.

A partitioner maps the pool's labels to one index array per site. Every call is a pure
function of its inputs and the generator it is given, so all sites of a run (each in its own
worker process) compute the same split from the same seed.

>>> import numpy as np
>>> labels = np.repeat(np.arange(4), 25)
>>> parts = IidPartitioner().partition(labels, 4, np.random.default_rng(0))
>>> [len(p) for p in parts]
[25, 25, 25, 25]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Partitioner(Protocol):
    def partition(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Return ``num_partitions`` disjoint index arrays that cover ``labels``."""
        ...


def _check(labels: np.ndarray, num_partitions: int, min_size: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    if len(labels) < num_partitions * min_size:
        raise ValueError(
            f"{len(labels)} samples cannot give {num_partitions} sites {min_size} samples each; "
            "lower runtime.num_clients or use a larger dataset"
        )


@dataclass(frozen=True)
class IidPartitioner:
    """Shuffle, then cut into near-equal parts (sizes differ by at most one)."""

    def partition(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        _check(labels, num_partitions, 1)
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_partitions)]


@dataclass(frozen=True)
class DirichletPartitioner:
    """Label skew: each class is spread over the sites in proportions drawn from Dir(alpha).

    Small ``alpha`` (0.1) gives sites dominated by a few classes; large ``alpha`` (100) tends to
    IID. Draws are repeated until every site holds at least ``min_partition_size`` samples, the
    usual practice since Hsu et al. (2019); after ``max_attempts`` failed draws it raises rather
    than loop forever.
    """

    alpha: float = 0.5
    min_partition_size: int = 10
    max_attempts: int = 1000

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(
                f"alpha must be positive (0.1 = strong skew, 100 = near IID), got {self.alpha}"
            )
        if self.min_partition_size < 1:
            raise ValueError(
                f"min_partition_size must be at least 1, got {self.min_partition_size}"
            )

    def partition(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        _check(labels, num_partitions, self.min_partition_size)
        classes = np.unique(labels)
        for _ in range(self.max_attempts):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
            for cls in classes:
                members = rng.permutation(np.flatnonzero(labels == cls))
                shares = rng.dirichlet(np.full(num_partitions, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
                for site, chunk in enumerate(np.split(members, cuts)):
                    parts[site].append(chunk)
            result = [np.sort(np.concatenate(p)) for p in parts]
            if min(len(p) for p in result) >= self.min_partition_size:
                return result
        raise ValueError(
            f"no Dirichlet(alpha={self.alpha}) draw in {self.max_attempts} gave every one of "
            f"{num_partitions} sites {self.min_partition_size} samples; "
            "raise data.partitioner.alpha, "
            "lower data.partitioner.min_partition_size or runtime.num_clients"
        )

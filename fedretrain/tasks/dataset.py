"""The in-memory dataset every task produces and every site trains on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """Features and integer labels held as numpy arrays.

    Parameters
    ----------
    x : np.ndarray
        Features, ``float32``, shape ``(n, *input_shape)``.
    y : np.ndarray
        Labels, ``int64`` in ``[0, num_classes)``, shape ``(n,)``.
    num_classes : int
        Number of classes of the task: fixed by the task, not by the labels a subset happens to
        hold, so every site builds the same model.
    groups : np.ndarray or None
        Each sample's group, ``int64`` in ``[0, num_groups)`` (e.g. a tabular file's
        ``group_column``): the gate compares models group by group. None: no groups.
    num_groups : int
        Number of groups of the task (0 without groups), fixed like ``num_classes``.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None
    num_groups: int = 0

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}: they must match"
            )
        if self.y.ndim != 1:
            raise ValueError(f"y must be one-dimensional, got shape {self.y.shape}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got [{self.y.min()}, {self.y.max()}]"
            )

        if (self.groups is None) != (self.num_groups == 0):
            raise ValueError("groups and num_groups go together: give both, or neither")
        if self.groups is not None:
            if self.groups.shape != self.y.shape:
                raise ValueError(f"groups has shape {self.groups.shape}, y {self.y.shape}")
            if len(self.groups) and (self.groups.min() < 0 or self.groups.max() >= self.num_groups):
                raise ValueError(f"groups must lie in [0, {self.num_groups})")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        groups = None if self.groups is None else self.groups[indices]
        return ArrayDataset(
            self.x[indices], self.y[indices], self.num_classes, groups, self.num_groups
        )

    def split(
        self, holdout_fraction: float, rng: np.random.Generator
    ) -> tuple[ArrayDataset, ArrayDataset]:
        """Split into (train, holdout) at random; the holdout keeps at least one sample."""
        order = rng.permutation(len(self))
        n_holdout = max(1, round(holdout_fraction * len(self))) if holdout_fraction > 0 else 0
        return self.subset(order[n_holdout:]), self.subset(order[:n_holdout])


def as_dataset(x: np.ndarray, y: np.ndarray, num_classes: int | None = None) -> ArrayDataset:
    """Cast to the dtypes torch expects; infer the class count from the labels if not given."""
    y = np.asarray(y, dtype=np.int64)
    if num_classes is None:
        num_classes = max(2, int(y.max()) + 1) if len(y) else 2
    return ArrayDataset(np.asarray(x, dtype=np.float32), y, num_classes)

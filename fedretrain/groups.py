"""Groups of users, so that the gate can see a group a candidate serves worse.

A sample's group comes from the data where it has one (a tabular file's ``group_column``,
:attr:`fedretrain.tasks.ArrayDataset.groups`), or from a rule on its features for a task that
has none (``task.group_feature`` and ``task.group_threshold``: group 1 where that feature of
the flattened input exceeds the threshold, group 0 elsewhere; e.g. SEA's irrelevant third
feature, ``task.group_feature=2 task.group_threshold=8``, makes a minority of about 20%).

Sites send one confusion matrix per group with their evaluation; the matrices add up across
sites like the global one (:func:`fedretrain.metrics.group_confusion`), and the gate compares
each group's recall (:func:`fedretrain.metrics.group_recalls`).

>>> from fedretrain.config import TaskConfig
>>> data = ArrayDataset(np.array([[0.0, 9.0], [1.0, 2.0]], np.float32), np.array([0, 1]), 2)
>>> group_ids(data, TaskConfig(group_feature=1, group_threshold=8.0))
(array([1, 0]), 2)
"""

from __future__ import annotations

import numpy as np

from fedretrain.config import TaskConfig
from fedretrain.tasks.dataset import ArrayDataset

SYNTHETIC_GROUPS = 2  # the feature rule's: at or below the threshold, above it


def group_ids(data: ArrayDataset, task: TaskConfig) -> tuple[np.ndarray, int] | None:
    """Each sample's group and the task's number of groups; None when the task has none."""
    if data.groups is not None:
        return data.groups, data.num_groups
    if task.group_feature is None:
        return None
    flat = data.x.reshape(len(data), -1)
    above = flat[:, task.group_feature] > task.group_threshold if len(data) else np.zeros(0)
    return np.asarray(above, dtype=np.int64), SYNTHETIC_GROUPS


def feature_problem(group_feature: int | None, input_shape: tuple[int, ...]) -> str | None:
    """Why ``task.group_feature`` cannot name a feature of inputs shaped ``input_shape``."""
    features = int(np.prod(input_shape))
    if group_feature is None or 0 <= group_feature < features:
        return None
    return (
        f"task.group_feature={group_feature}: the inputs have {features} features "
        f"(0..{features - 1} once flattened); name one of them, or null for no groups"
    )

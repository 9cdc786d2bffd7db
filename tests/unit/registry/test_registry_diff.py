"""Differences between two versions: weights, lineage and metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedretrain.registry.diff import (
    lineage_changes,
    metric_changes,
    tensor_distances,
    total_distance,
)
from fedretrain.registry.records import ModelVersion, Status


def _version(number: int, **changes: object) -> ModelVersion:
    fields: dict[str, object] = {
        "version": number,
        "key": f"k{number}",
        "parent": None,
        "trigger": "initial",
        "reason": "r",
        "period": 0,
        "rounds": 3,
        "samples": {"1": 10},
        "config_hash": "c",
        "metrics": {"accuracy": 0.8},
        "site_metrics": {"1": {"accuracy": 0.8}},
        "epsilon": {},
        "file": f"models/v{number}.safetensors",
        "sha256": "s",
        "status": Status.champion,
        "created": "t",
    }
    fields.update(changes)
    return ModelVersion(**fields)  # type: ignore[arg-type]


def test_tensor_distances_are_per_tensor_l2_norms_of_the_difference() -> None:
    first = {"w": np.zeros((2, 2), np.float32), "b": np.array([1.0, 2.0]), "n": np.array(3)}
    second = {"w": np.full((2, 2), 1.5, np.float32), "b": np.array([4.0, 6.0]), "n": np.array(3)}
    rows = {d.name: d for d in tensor_distances(first, second)}
    assert rows["w"].l2 == pytest.approx(3.0)  # sqrt(4 * 1.5^2)
    assert rows["b"].l2 == pytest.approx(5.0)  # a 3-4-5 triangle
    assert rows["n"].l2 == 0.0
    assert rows["b"].norm_first == pytest.approx(math.sqrt(5))
    assert rows["b"].norm_second == pytest.approx(math.sqrt(52))
    assert total_distance(list(rows.values())) == pytest.approx(math.sqrt(9 + 25))


def test_tensors_that_cannot_be_compared_say_why() -> None:
    rows = tensor_distances(
        {"a": np.zeros(2), "s": np.zeros(3)}, {"s": np.zeros((3, 1)), "z": np.ones(1)}
    )
    assert [(d.name, d.note) for d in rows] == [
        ("a", "only in the first"),
        ("s", "shape (3,) vs (3, 1)"),
        ("z", "only in the second"),
    ]
    assert all(math.isnan(d.l2) for d in rows)
    assert total_distance(rows) == 0.0


def test_lineage_changes_list_only_what_differs() -> None:
    first = _version(1)
    second = _version(2, parent=1, trigger="drift", status=Status.candidate)
    changes = {name: (a, b) for name, a, b in lineage_changes(first, second)}
    assert changes == {
        "key": ("k1", "k2"),
        "parent": (None, 1),
        "trigger": ("initial", "drift"),
        "status": (Status.champion, Status.candidate),
    }


def test_metric_changes_cover_global_and_site_metrics_of_either_version() -> None:
    first = _version(1)
    second = _version(
        2,
        metrics={"accuracy": 0.9, "loss": 0.3},
        site_metrics={"1": {"accuracy": 0.7}, "10": {"accuracy": 1.0}, "2": {"accuracy": 0.5}},
    )
    rows = metric_changes(first, second)
    assert [(m.site, m.name) for m in rows] == [
        (None, "accuracy"),
        (None, "loss"),
        ("1", "accuracy"),
        ("2", "accuracy"),  # sites sort numerically
        ("10", "accuracy"),
    ]
    assert rows[0].delta == pytest.approx(0.1)
    assert math.isnan(rows[1].first) and rows[1].second == 0.3
    assert rows[2].delta == pytest.approx(-0.1)

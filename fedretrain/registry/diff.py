"""How two versions differ: lineage, metrics and weights (per-tensor L2 distance).

>>> import numpy as np
>>> a = {"w": np.zeros((2, 2)), "b": np.zeros(2)}
>>> b = {"w": np.full((2, 2), 1.5), "c": np.zeros(1)}
>>> [(d.name, d.l2, d.note) for d in tensor_distances(a, b)]
[('b', nan, 'only in the first'), ('c', nan, 'only in the second'), ('w', 3.0, '')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedretrain.registry.records import ModelVersion

LINEAGE_FIELDS = (
    "key",
    "parent",
    "trigger",
    "reason",
    "period",
    "rounds",
    "sites",
    "samples",
    "config_hash",
    "epsilon",
    "status",
    "created",
    "sha256",
)


@dataclass(frozen=True)
class TensorDistance:
    """``l2`` is ||second - first||_2 in float64; NaN when the two cannot be compared."""

    name: str
    l2: float
    norm_first: float
    norm_second: float
    note: str  # why l2 is NaN ("only in the first", "shape (2,) vs (3,)"), else ""


@dataclass(frozen=True)
class MetricChange:
    """A metric of two versions; ``site`` is None for a global metric. NaN where absent."""

    site: str | None
    name: str
    first: float
    second: float

    @property
    def delta(self) -> float:
        return self.second - self.first


def tensor_distances(
    first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]
) -> list[TensorDistance]:
    """One row per array name in either model, sorted by name."""
    rows = []
    for name in sorted(set(first) | set(second)):
        a, b = first.get(name), second.get(name)
        norm_a = _norm(a) if a is not None else math.nan
        norm_b = _norm(b) if b is not None else math.nan
        if a is None or b is None:
            note = "only in the first" if b is None else "only in the second"
            rows.append(TensorDistance(name, math.nan, norm_a, norm_b, note))
        elif a.shape != b.shape:
            rows.append(
                TensorDistance(name, math.nan, norm_a, norm_b, f"shape {a.shape} vs {b.shape}")
            )
        else:
            l2 = _norm(np.asarray(b, np.float64) - np.asarray(a, np.float64))
            rows.append(TensorDistance(name, l2, norm_a, norm_b, ""))
    return rows


def total_distance(rows: list[TensorDistance]) -> float:
    """The L2 distance over every array both models hold with the same shape."""
    return math.sqrt(sum(r.l2**2 for r in rows if not math.isnan(r.l2)))


def lineage_changes(first: ModelVersion, second: ModelVersion) -> list[tuple[str, object, object]]:
    """``(field, first value, second value)`` for each lineage field that differs."""
    out = []
    for name in LINEAGE_FIELDS:
        a, b = getattr(first, name), getattr(second, name)
        if a != b:
            out.append((name, a, b))
    return out


def metric_changes(first: ModelVersion, second: ModelVersion) -> list[MetricChange]:
    """Every global metric, then every per-site metric, of either version."""
    rows = [
        MetricChange(
            None, name, first.metrics.get(name, math.nan), second.metrics.get(name, math.nan)
        )
        for name in sorted(set(first.metrics) | set(second.metrics))
    ]
    for site in sorted(set(first.site_metrics) | set(second.site_metrics), key=_site_key):
        a, b = first.site_metrics.get(site, {}), second.site_metrics.get(site, {})
        rows += [
            MetricChange(site, name, a.get(name, math.nan), b.get(name, math.nan))
            for name in sorted(set(a) | set(b))
        ]
    return rows


def _norm(array: np.ndarray) -> float:
    flat = np.asarray(array, np.float64).ravel()
    return float(np.sqrt(np.dot(flat, flat)))


def _site_key(site: str) -> tuple[int, int | str]:
    """Sites are stored as text; numeric ones sort numerically."""
    return (0, int(site)) if site.isdigit() else (1, site)

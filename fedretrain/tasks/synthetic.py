"""Synthetic tabular concepts from the concept-drift literature (SEA, SINE, CIRCLE).

Each generator draws ``n_samples`` points from its input distribution and labels them with one
concept; drift scenarios switch concepts by calling the same generator with other parameters.
Definitions follow FedDrift's references:

- SEA: ``x ~ U[0, 10]^3``, ``y = x0 + x1 > theta`` (the third feature is noise);
- SINE: ``x ~ U[0, 1]^2``, ``y = x1 <= sin(x0)``;
- CIRCLE: ``x ~ U[0, 1]^2``, ``y =`` outside the circle of ``center`` and ``radius``.

>>> ds = sea(n_samples=1000, theta=8.0, seed=0)
>>> ds.x.shape, ds.num_classes
((1000, 3), 2)
>>> bool(((ds.x[:, 0] + ds.x[:, 1] > 8.0) == ds.y.astype(bool)).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedretrain.tasks.dataset import ArrayDataset


def _finish(x: np.ndarray, y: np.ndarray, noise: float, rng: np.random.Generator) -> ArrayDataset:
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise is the fraction of flipped labels, in [0, 0.5); got {noise}")
    y = y.astype(np.int64)
    if noise > 0:
        flip = rng.random(len(y)) < noise
        y = np.where(flip, 1 - y, y)
    return ArrayDataset(x.astype(np.float32), y, num_classes=2)


def _check_size(n_samples: int) -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")


def sea(
    n_samples: int = 5000, theta: float = 8.0, noise: float = 0.0, seed: int = 0
) -> ArrayDataset:
    """SEA concepts: three features on ``[0, 10]``, the label thresholds the first two."""
    _check_size(n_samples)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 10.0, size=(n_samples, 3))
    return _finish(x, x[:, 0] + x[:, 1] > theta, noise, rng)


def sine(
    n_samples: int = 5000, flip: bool = False, noise: float = 0.0, seed: int = 0
) -> ArrayDataset:
    """SINE: the label says whether the point lies under ``sin(x0)``; ``flip`` inverts it."""
    _check_size(n_samples)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n_samples, 2))
    y = x[:, 1] <= np.sin(x[:, 0])
    return _finish(x, ~y if flip else y, noise, rng)


def circle(
    n_samples: int = 5000,
    center: Sequence[float] = (0.2, 0.5),
    radius: float = 0.15,
    noise: float = 0.0,
    seed: int = 0,
) -> ArrayDataset:
    """CIRCLE: the label says whether the point lies outside a circle in the unit square."""
    _check_size(n_samples)
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if len(center) != 2:
        raise ValueError(f"center must have two coordinates, got {list(center)}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n_samples, 2))
    outside = np.hypot(x[:, 0] - center[0], x[:, 1] - center[1]) > radius
    return _finish(x, outside, noise, rng)

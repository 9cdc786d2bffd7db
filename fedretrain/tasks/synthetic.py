"""Synthetic tabular concepts from the concept-drift literature (SEA, SINE, CIRCLE).

Each generator draws ``n_samples`` points from its input distribution and labels them with one
concept; drift scenarios switch concepts by calling the same generator with other parameters.
Definitions follow FedDrift's references:

- SEA: ``x ~ U[0, 10]^3``, ``y = x0 + x1 > theta`` (the third feature is noise);
- SINE: ``x ~ U[0, 1]^2``, ``y = x1 <= sin(x0)``;
- CIRCLE: ``x ~ U[0, 1]^2``, ``y =`` outside the circle of ``center`` and ``radius``.

The input boxes (:data:`SEA_INPUTS`, :data:`UNIT_SQUARE`) and labelling rules (:func:`sea_label`,
:func:`sine_label`, :func:`circle_label`) are public so that the drifting streams of
:mod:`fedretrain.drift` draw and label exactly as these static tasks do.

>>> ds = sea(n_samples=1000, theta=8.0, seed=0)
>>> ds.x.shape, ds.num_classes
((1000, 3), 2)
>>> bool(((ds.x[:, 0] + ds.x[:, 1] > 8.0) == ds.y.astype(bool)).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedretrain.tasks.dataset import ArrayDataset


@dataclass(frozen=True)
class UniformBox:
    """The input distribution of a synthetic concept family: ``x ~ U[low, high]^dim``.

    >>> UNIT_SQUARE.sample(3, np.random.default_rng(0)).shape
    (3, 2)
    """

    low: float
    high: float
    dim: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points drawn uniformly from the box, float64 of shape ``(n, dim)``."""
        return rng.uniform(self.low, self.high, size=(n, self.dim))


SEA_INPUTS = UniformBox(0.0, 10.0, 3)
UNIT_SQUARE = UniformBox(0.0, 1.0, 2)


def sea_label(x: np.ndarray, theta: float) -> np.ndarray:
    """SEA concept: whether the first two features sum above ``theta``.

    >>> sea_label(np.array([[4.0, 5.0, 0.0], [1.0, 2.0, 9.0]]), theta=8.0)
    array([ True, False])
    """
    return np.asarray(x[:, 0] + x[:, 1] > theta)


def sine_label(x: np.ndarray, flip: bool = False) -> np.ndarray:
    """SINE concept: whether ``x1 <= sin(x0)``, inverted when ``flip``.

    >>> sine_label(np.array([[0.5, 0.1], [0.5, 0.9]])), sine_label(np.array([[0.5, 0.1]]), True)
    (array([ True, False]), array([False]))
    """
    under = np.asarray(x[:, 1] <= np.sin(x[:, 0]))
    return ~under if flip else under


def check_circle(center: Sequence[float], radius: float) -> None:
    """Raise ``ValueError`` unless ``center`` has two coordinates and ``radius`` is positive."""
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if len(center) != 2:
        raise ValueError(f"center must have two coordinates, got {list(center)}")


def circle_label(x: np.ndarray, center: Sequence[float], radius: float) -> np.ndarray:
    """CIRCLE concept: whether the point lies outside the circle of ``center`` and ``radius``.

    >>> circle_label(np.array([[0.2, 0.5], [0.9, 0.9]]), center=(0.2, 0.5), radius=0.15)
    array([False,  True])
    """
    return np.asarray(np.hypot(x[:, 0] - center[0], x[:, 1] - center[1]) > radius)


def flip_labels(y: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Binary labels as ``int64``, each flipped with probability ``noise`` (in ``[0, 0.5)``).

    >>> flip_labels(np.array([True, False]), 0.0, np.random.default_rng(0))
    array([1, 0])
    """
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise is the fraction of flipped labels, in [0, 0.5); got {noise}")
    y = y.astype(np.int64)
    if noise > 0:
        flip = rng.random(len(y)) < noise
        y = np.where(flip, 1 - y, y)
    return y


def _finish(x: np.ndarray, y: np.ndarray, noise: float, rng: np.random.Generator) -> ArrayDataset:
    return ArrayDataset(x.astype(np.float32), flip_labels(y, noise, rng), num_classes=2)


def _check_size(n_samples: int) -> None:
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")


def sea(
    n_samples: int = 5000, theta: float = 8.0, noise: float = 0.0, seed: int = 0
) -> ArrayDataset:
    """SEA concepts: three features on ``[0, 10]``, the label thresholds the first two."""
    _check_size(n_samples)
    rng = np.random.default_rng(seed)
    x = SEA_INPUTS.sample(n_samples, rng)
    return _finish(x, sea_label(x, theta), noise, rng)


def sine(
    n_samples: int = 5000, flip: bool = False, noise: float = 0.0, seed: int = 0
) -> ArrayDataset:
    """SINE: the label says whether the point lies under ``sin(x0)``; ``flip`` inverts it."""
    _check_size(n_samples)
    rng = np.random.default_rng(seed)
    x = UNIT_SQUARE.sample(n_samples, rng)
    return _finish(x, sine_label(x, flip), noise, rng)


def circle(
    n_samples: int = 5000,
    center: Sequence[float] = (0.2, 0.5),
    radius: float = 0.15,
    noise: float = 0.0,
    seed: int = 0,
) -> ArrayDataset:
    """CIRCLE: the label says whether the point lies outside a circle in the unit square."""
    _check_size(n_samples)
    check_circle(center, radius)
    rng = np.random.default_rng(seed)
    x = UNIT_SQUARE.sample(n_samples, rng)
    return _finish(x, circle_label(x, center, radius), noise, rng)

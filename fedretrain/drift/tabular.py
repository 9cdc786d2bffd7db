"""Drifting tabular streams over the SEA, SINE and CIRCLE concepts of
:mod:`fedretrain.tasks.synthetic`.

Every concept takes, besides its own parameters, two options:

- ``power`` (covariate shift): each feature is drawn as usual, then mapped through
  :func:`power_transform` on its range; the label comes from the same rule, so ``P(y | x)`` is
  unchanged while ``P(x)`` moves (towards the low end for ``power > 1``);
- ``class_weights`` (prior shift): the window's labels follow these proportions. Points are drawn
  and labelled as usual and kept by rejection until each class has its quota, so ``P(x | y)`` is
  unchanged while ``P(y)`` moves.

Label noise (``noise``, a stream-wide share of flipped labels) is applied before the class
quotas, so the quotas hold for the labels a site sees.

>>> stream = SeaStream(concepts=[{"theta": 8}, {"theta": 9.5}])
>>> ds = stream.sample(1, 500, np.random.default_rng(0))
>>> bool((ds.y == (ds.x[:, 0] + ds.x[:, 1] > 9.5)).all()), stream.input_shape
(True, (3,))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fedretrain.drift.concepts import (
    Option,
    check_concept_id,
    class_weights,
    flag,
    plain,
    point,
    positive,
    read_concepts,
    real,
)
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.tasks.synthetic import (
    SEA_INPUTS,
    UNIT_SQUARE,
    UniformBox,
    check_circle,
    circle_label,
    flip_labels,
    sea_label,
    sine_label,
)

__all__ = ["CircleStream", "SeaStream", "SineStream", "TabularStream", "power_transform"]

# Candidate draws per class quota before prior-shift sampling gives up on a class the concept
# almost never produces.
_MAX_REJECTION_ROUNDS = 1000


def power_transform(x: np.ndarray, low: float, high: float, power: float) -> np.ndarray:
    """Map each value to ``low + (high - low) * ((x - low) / (high - low)) ** power``.

    A monotone bijection of ``[low, high]`` onto itself: ``power > 1`` pushes mass towards
    ``low``, ``power < 1`` towards ``high``, ``power == 1`` is the identity.

    >>> power_transform(np.array([0.0, 5.0, 10.0]), 0.0, 10.0, 2.0)
    array([ 0. ,  2.5, 10. ])
    """
    span = high - low
    return np.asarray(low + span * np.clip((x - low) / span, 0.0, 1.0) ** power)


class TabularStream:
    """A binary concept family over a uniform box; subclasses give the options and the rule.

    Parameters
    ----------
    concepts : list of dict
        One mapping of options per concept id; the valid keys are the subclass's own plus
        ``power`` (default 1) and ``class_weights`` (default ``None``: the concept's own).
    noise : float
        Share of labels flipped, in ``[0, 0.5)``.
    """

    inputs: ClassVar[UniformBox]
    own_options: ClassVar[dict[str, Option]]
    num_classes: int = 2

    def __init__(self, concepts: Sequence[Mapping[str, Any]], noise: float = 0.0) -> None:
        if not 0.0 <= noise < 0.5:
            raise ValueError(
                f"{type(self).__name__}: noise is the share of flipped labels, in [0, 0.5); "
                f"got {noise}"
            )
        options = {
            **self.own_options,
            "power": Option(1.0, positive),
            "class_weights": Option(None, class_weights(self.num_classes)),
        }
        self._concepts = read_concepts(type(self).__name__, concepts, options)
        self.concepts: list[dict[str, Any]] = plain(concepts)
        self.noise = noise

    @property
    def num_concepts(self) -> int:
        return len(self._concepts)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.inputs.dim,)

    def label(self, x: np.ndarray, concept: int) -> np.ndarray:
        """The noiseless labels (bool) concept ``concept`` gives to the points ``x``."""
        options = self._concepts[check_concept_id(type(self).__name__, concept, self.num_concepts)]
        return self._rule(x, options)

    def sample(self, concept: int, n: int, rng: np.random.Generator) -> ArrayDataset:
        """``n`` points of concept ``concept``, drawn with ``rng``."""
        owner = type(self).__name__
        options = self._concepts[check_concept_id(owner, concept, self.num_concepts)]
        if n < 0:
            raise ValueError(f"{owner}.sample: n must be >= 0, got {n}")
        weights = options["class_weights"]
        if weights is None:
            x, y = self._draw(n, options, rng)
        else:
            x, y = self._draw_with_quotas(rng.multinomial(n, weights), options, rng, concept)
        return ArrayDataset(x.astype(np.float32), y, num_classes=self.num_classes)

    def _rule(self, x: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _draw(
        self, n: int, options: dict[str, Any], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self.inputs.sample(n, rng)
        if options["power"] != 1.0:
            x = power_transform(x, self.inputs.low, self.inputs.high, options["power"])
        return x, flip_labels(self._rule(x, options), self.noise, rng)

    def _draw_with_quotas(
        self, quotas: np.ndarray, options: dict[str, Any], rng: np.random.Generator, concept: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw and label candidates until each class ``c`` has ``quotas[c]`` points, shuffled."""
        need = quotas.copy()
        batch = max(2 * int(quotas.sum()), 64)
        xs, ys = [], []
        for _ in range(_MAX_REJECTION_ROUNDS):
            if not need.any():
                break
            x, y = self._draw(batch, options, rng)
            for c in np.flatnonzero(need):
                keep = np.flatnonzero(y == c)[: need[c]]
                xs.append(x[keep])
                ys.append(y[keep])
                need[c] -= len(keep)
        else:
            if need.any():
                short = int(np.flatnonzero(need)[0])
                raise ValueError(
                    f"{type(self).__name__} concept {concept}: class {short} has weight "
                    f"{options['class_weights'][short]:.3g} but almost no point of this concept "
                    "falls in it; lower that weight or change the concept"
                )
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(y))
        return x[order], y[order]


class SeaStream(TabularStream):
    """SEA concepts: ``x ~ U[0, 10]^3``, ``y = x0 + x1 > theta`` (``theta`` default 8).

    >>> SeaStream(concepts=[{"theta": 8}, {"theta": 9}, {"theta": 7}, {"theta": 9.5}]).num_concepts
    4
    """

    inputs = SEA_INPUTS
    own_options = {"theta": Option(8.0, real)}

    def _rule(self, x: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        return sea_label(x, options["theta"])


class SineStream(TabularStream):
    """SINE concepts: ``x ~ U[0, 1]^2``, ``y = x1 <= sin(x0)``, inverted when ``flip``."""

    inputs = UNIT_SQUARE
    own_options = {"flip": Option(False, flag)}

    def _rule(self, x: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        return sine_label(x, options["flip"])


def _circle_center(value: Any) -> tuple[float, float]:
    center = point(value)
    check_circle(center, 1.0)
    return center


def _circle_radius(value: Any) -> float:
    radius = real(value)
    check_circle((0.0, 0.0), radius)
    return radius


class CircleStream(TabularStream):
    """CIRCLE concepts: ``x ~ U[0, 1]^2``, ``y =`` outside the circle of ``center``, ``radius``
    (defaults ``[0.2, 0.5]`` and ``0.15``)."""

    inputs = UNIT_SQUARE
    own_options = {
        "center": Option((0.2, 0.5), _circle_center),
        "radius": Option(0.15, _circle_radius),
    }

    def _rule(self, x: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        return circle_label(x, options["center"], options["radius"])

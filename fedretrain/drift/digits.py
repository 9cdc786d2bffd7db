"""A drifting stream over scikit-learn's bundled 8x8 digits.

Each concept resamples the 1,797 bundled images (with replacement) and may change them:

- ``swaps`` (concept drift): pairs of classes whose labels trade places, e.g.
  ``[[1, 2], [3, 4], [5, 6]]``; the images stay, ``P(y | x)`` changes;
- ``rotation`` (covariate shift): degrees counter-clockwise; multiples of 90 turn the pixel grid
  exactly (``np.rot90``), other angles interpolate linearly (``scipy.ndimage.rotate``);
- ``class_weights`` (prior shift): the labels a site sees (after swaps) follow these proportions;
  labels are drawn first, then an image of the matching class.

Images keep the layout of :func:`fedretrain.tasks.digits.load_digits`: ``(n, 1, 8, 8)`` float32
in ``[0, 1]``, as :class:`fedretrain.models.DigitsCNN` expects.

>>> stream = DigitsStream(concepts=[{}, {"swaps": [[1, 2]]}, {"rotation": 90}])
>>> ds = stream.sample(1, 200, np.random.default_rng(0))
>>> ds.x.shape, stream.num_concepts, stream.num_classes
((200, 1, 8, 8), 3, 10)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

import numpy as np
from scipy import ndimage

from fedretrain.drift.concepts import (
    Option,
    check_concept_id,
    class_weights,
    plain,
    read_concepts,
    real,
)
from fedretrain.tasks.dataset import ArrayDataset
from fedretrain.tasks.digits import load_digits

__all__ = ["DigitsStream", "rotate_images", "swap_permutation"]

NUM_DIGITS = 10


def swap_permutation(swaps: Sequence[Sequence[int]], num_classes: int = NUM_DIGITS) -> np.ndarray:
    """The label map of disjoint class swaps: ``perm[old] = new``.

    >>> swap_permutation([[1, 2], [3, 4]], num_classes=5)
    array([0, 2, 1, 4, 3])
    """
    perm = np.arange(num_classes)
    seen: set[int] = set()
    for pair in swaps:
        if (
            not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(c, Integral) and 0 <= c < num_classes for c in pair)
            or pair[0] == pair[1]
        ):
            raise ValueError(
                f"each swap is a pair of two different classes in [0, {num_classes}), "
                f"such as [1, 2]; got {pair!r}"
            )
        a, b = int(pair[0]), int(pair[1])
        if a in seen or b in seen:
            raise ValueError(
                f"class {a if a in seen else b} appears in two swaps; swaps must be disjoint pairs"
            )
        seen |= {a, b}
        perm[a], perm[b] = b, a
    return perm


def rotate_images(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate images of shape ``(..., height, width)`` counter-clockwise by ``degrees``.

    Multiples of 90 are exact (``np.rot90``, which needs square images for the shape to stay);
    other angles interpolate linearly about the centre, with zeros beyond the grid, clipped to
    ``[0, 1]``.

    >>> rotate_images(np.array([[1.0, 2.0], [3.0, 4.0]]), 90)
    array([[2., 4.],
           [1., 3.]])
    """
    degrees = float(degrees) % 360.0
    if degrees % 90.0 == 0.0:
        return np.rot90(x, k=int(degrees // 90), axes=(-2, -1)).copy()
    turned = ndimage.rotate(
        x, degrees, axes=(-2, -1), reshape=False, order=1, mode="grid-constant", cval=0.0
    )
    return np.clip(turned, 0.0, 1.0).astype(x.dtype)


def _swaps(value: Any) -> np.ndarray:
    if not isinstance(value, Sequence):
        raise ValueError("must be a list of class pairs such as [[1, 2], [3, 4]]")
    return swap_permutation(value)


class DigitsStream:
    """Concepts over the bundled digits: label swaps, rotations and class proportions.

    Parameters
    ----------
    concepts : list of dict
        One mapping per concept id with keys ``swaps`` (default ``[]``), ``rotation`` (degrees,
        default 0) and ``class_weights`` (ten weights, default ``None``: the bundled
        proportions). ``{}`` is the digits as bundled.
    """

    num_classes: int = NUM_DIGITS
    input_shape: tuple[int, ...] = (1, 8, 8)

    def __init__(self, concepts: Sequence[Mapping[str, Any]]) -> None:
        options = {
            "swaps": Option(np.arange(NUM_DIGITS), _swaps),
            "rotation": Option(0.0, real),
            "class_weights": Option(None, class_weights(NUM_DIGITS)),
        }
        self._concepts = read_concepts(type(self).__name__, concepts, options)
        self.concepts: list[dict[str, Any]] = plain(concepts)
        self._pool: ArrayDataset | None = None

    @property
    def num_concepts(self) -> int:
        return len(self._concepts)

    def pool(self) -> ArrayDataset:
        """The bundled digits, loaded on first use and kept on this instance."""
        if self._pool is None:
            self._pool = load_digits()
        return self._pool

    def sample(self, concept: int, n: int, rng: np.random.Generator) -> ArrayDataset:
        """``n`` images of concept ``concept``, drawn with replacement using ``rng``."""
        owner = type(self).__name__
        options = self._concepts[check_concept_id(owner, concept, self.num_concepts)]
        if n < 0:
            raise ValueError(f"{owner}.sample: n must be >= 0, got {n}")
        pool, perm, weights = self.pool(), options["swaps"], options["class_weights"]
        if weights is None:
            rows = rng.integers(0, len(pool), size=n)
            y = perm[pool.y[rows]]
        else:
            y = rng.choice(NUM_DIGITS, size=n, p=weights)
            source = np.argsort(perm)[y]  # the bundled class whose images carry label y
            rows = np.empty(n, dtype=np.int64)
            for c in np.unique(source):
                at = source == c
                rows[at] = rng.choice(np.flatnonzero(pool.y == c), size=int(at.sum()))
        x = pool.x[rows]
        if options["rotation"] % 360.0:
            x = rotate_images(x, options["rotation"])
        return ArrayDataset(x, y.astype(np.int64), num_classes=NUM_DIGITS)

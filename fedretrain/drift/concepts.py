"""Per-concept options of a drifting stream: read from config, checked, given defaults.

A stream takes ``concepts`` as a list of mappings, one per concept id, so a scenario YAML can
write ``concepts: [{theta: 8}, {theta: 9, class_weights: [0.8, 0.2]}]``. :func:`read_concepts`
turns that list into plain dicts with every option filled in, and fails on the first bad entry
with a message naming the stream, the concept, the key and the valid keys.

>>> fields = {"theta": Option(8.0, real), "class_weights": Option(None, class_weights(2))}
>>> read_concepts("SeaStream", [{}, {"theta": 9}], fields)
[{'theta': 8.0, 'class_weights': None}, {'theta': 9.0, 'class_weights': None}]
>>> read_concepts("SeaStream", [{"theta": 9, "thetta": 7}], fields)
Traceback (most recent call last):
...
ValueError: SeaStream concept 0: unknown key(s) ['thetta']; valid keys: ['class_weights', 'theta']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Option:
    """One per-concept key: its value when a concept leaves it out, and how to read it."""

    default: Any
    read: Callable[[Any], Any]


def plain(value: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists.

    >>> plain({"center": (0.2, 0.5)})
    {'center': [0.2, 0.5]}
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


def read_concepts(
    owner: str, concepts: Sequence[Mapping[str, Any]], fields: Mapping[str, Option]
) -> list[dict[str, Any]]:
    """Check each concept's keys against ``fields`` and read their values, defaults filled in."""
    if isinstance(concepts, (str, Mapping)) or not isinstance(concepts, Sequence) or not concepts:
        raise ValueError(
            f"{owner}: concepts must be a non-empty list with one mapping of options per "
            f"concept (valid keys: {sorted(fields)}), got {concepts!r}"
        )
    parsed = []
    for i, concept in enumerate(concepts):
        if not isinstance(concept, Mapping):
            raise ValueError(
                f"{owner} concept {i}: must be a mapping of options (valid keys: "
                f"{sorted(fields)}; {{}} takes every default), got {concept!r}"
            )
        unknown = sorted(set(map(str, concept)) - set(fields))
        if unknown:
            raise ValueError(
                f"{owner} concept {i}: unknown key(s) {unknown}; valid keys: {sorted(fields)}"
            )
        values = {}
        for key, option in fields.items():
            if key not in concept:
                values[key] = option.default
                continue
            try:
                values[key] = option.read(plain(concept[key]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{owner} concept {i}: {key}={concept[key]!r}: {err}") from None
        parsed.append(values)
    return parsed


def check_concept_id(owner: str, concept: int, num_concepts: int) -> int:
    """``concept`` as an int, or ``ValueError`` if the stream has no such concept."""
    if not 0 <= concept < num_concepts:
        raise ValueError(
            f"{owner} has {num_concepts} concepts (ids 0..{num_concepts - 1}); got concept "
            f"{concept}: add it to the stream's concepts or change the schedule"
        )
    return int(concept)


# ---------------------------------------------------------------------------------- readers


def real(value: Any) -> float:
    """A finite number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(float(value)):
        raise ValueError("must be a finite number")
    return float(value)


def positive(value: Any) -> float:
    """A finite number > 0."""
    number = real(value)
    if number <= 0:
        raise ValueError("must be > 0")
    return number


def flag(value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError("must be true or false")
    return bool(value)


def point(value: Any) -> tuple[float, float]:
    """Two finite coordinates."""
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError("must be two coordinates such as [0.2, 0.5]")
    return real(value[0]), real(value[1])


def class_weights(num_classes: int) -> Callable[[Any], np.ndarray | None]:
    """A reader for prior shift: ``None``, or ``num_classes`` weights normalised to sum to 1.

    >>> class_weights(2)([3, 1])
    array([0.75, 0.25])
    """

    def read(value: Any) -> np.ndarray | None:
        if value is None:
            return None
        if not isinstance(value, Sequence) or len(value) != num_classes:
            raise ValueError(f"must be null or a list of {num_classes} weights, one per class")
        weights = np.array([real(w) for w in value])
        if weights.min() < 0 or weights.sum() <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        normalised: np.ndarray = weights / weights.sum()
        return normalised

    return read

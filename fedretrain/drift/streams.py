"""Drifting data streams: the interface, the built-in streams, and one site's window.

A :class:`DriftStream` draws labelled samples of any of its concepts; a
:class:`~fedretrain.drift.schedule.Schedule` says which concept (or blend of two) each site
follows in each monitoring period; :func:`sample_window` puts the two together. Scenario configs
name the streams by this module (``fedretrain.drift.streams.SeaStream``); they live in
:mod:`fedretrain.drift.tabular` and :mod:`fedretrain.drift.digits`.

>>> from fedretrain.drift.schedule import abrupt
>>> stream = SineStream(concepts=[{"flip": False}, {"flip": True}])
>>> schedule = abrupt(num_sites=3, num_periods=4, seed=0, at=2)
>>> window = sample_window(stream, schedule, site=0, period=2, n=100, seed=0)
>>> len(window), window.input_shape
(100, (2,))
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from fedretrain.drift.digits import DigitsStream
from fedretrain.drift.schedule import Schedule
from fedretrain.drift.tabular import CircleStream, SeaStream, SineStream, TabularStream
from fedretrain.tasks.dataset import ArrayDataset

__all__ = [
    "CircleStream",
    "DigitsStream",
    "DriftStream",
    "SeaStream",
    "SineStream",
    "TabularStream",
    "sample_window",
]

# Entropy tag of window sampling. numpy's SeedSequence pads entropy shorter than four words with
# zeros, so [seed, site, period] with period 0 would equal [seed, site]: every use of the run
# seed takes a fixed-length key with its own tag (the schedule generators use 3).
_WINDOW_RNG_TAG = 1


@runtime_checkable
class DriftStream(Protocol):
    """A source of labelled samples under any of ``num_concepts`` concepts.

    All concepts share ``num_classes`` and ``input_shape``, so one model serves every period.
    """

    @property
    def num_concepts(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def sample(self, concept: int, n: int, rng: np.random.Generator) -> ArrayDataset:
        """``n`` samples of concept ``concept``, all randomness from ``rng``."""
        ...


def sample_window(
    stream: DriftStream, schedule: Schedule, site: int, period: int, n: int, seed: int
) -> ArrayDataset:
    """Site ``site``'s ``n`` samples for monitoring period ``period``.

    The window draws ``round(mix * n)`` samples from the schedule's ``mix_to`` concept and the
    rest from its ``concepts`` entry, shuffled together. Its generator is seeded by
    ``(seed, site, period)`` alone, so any process (server, client, a re-run) draws the same
    window, and windows of different sites or periods are independent.
    """
    if not 0 <= site < schedule.num_sites:
        raise ValueError(f"site {site} outside the schedule's sites [0, {schedule.num_sites})")
    if not 0 <= period < schedule.num_periods:
        raise ValueError(
            f"period {period} outside the schedule's periods [0, {schedule.num_periods})"
        )
    if n < 1:
        raise ValueError(f"a window needs n >= 1 samples, got {n}")
    rng = np.random.default_rng([seed, _WINDOW_RNG_TAG, site, period])
    concept = int(schedule.concepts[site, period])
    if schedule.mix_to is None or schedule.mix is None:
        return stream.sample(concept, n, rng)
    blended = round(float(schedule.mix[site, period]) * n)
    parts = [(concept, n - blended), (int(schedule.mix_to[site, period]), blended)]
    drawn = [stream.sample(c, k, rng) for c, k in parts if k > 0]
    if len(drawn) == 1:
        return drawn[0]
    order = rng.permutation(n)
    x, y = np.concatenate([d.x for d in drawn]), np.concatenate([d.y for d in drawn])
    return ArrayDataset(x[order], y[order], drawn[0].num_classes)

"""The port between the retraining core and the sites: what the controller may ask of them.

The controller decides; a :class:`Federation` carries its requests to the sites and brings back
plain values. :class:`fedretrain.flower.federation.FlowerFederation` implements it on a Flower
grid; the unit tests implement it with numpy. Whatever a federation cannot use from a site (a
failed or malformed reply) it records itself and leaves out of what it returns: the core only
ever sees results it may rely on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fedretrain.metrics import EvalResult
from fedretrain.monitor.stats import HistogramEdges, PeriodStats

Weights = Mapping[str, np.ndarray]  # a model's state dict as numpy arrays, by parameter name
SiteScores = dict[int, tuple[int, int]]  # site id -> (correct, examples)


@dataclass(frozen=True)
class Evaluation:
    """A federated evaluation: the sites' statistics summed, and each site's score.

    ``result`` is None when no site's evaluation could be used; ``sites`` counts those that
    could.
    """

    result: EvalResult | None
    sites: int
    scores: SiteScores = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Accuracy on the union of the holdouts; NaN without any."""
        if self.result is None or not self.result.num_examples:
            return math.nan
        return float(np.trace(self.result.confusion) / self.result.num_examples)


@dataclass(frozen=True)
class TrainedRound:
    """One federated training round: the aggregated weights (the ones sent, when the round was
    skipped), the mean training loss, how many sites' updates were aggregated and, per site
    whose update was, the training examples it holds (its window or partition)."""

    weights: Weights
    loss: float
    sites: int
    examples: Mapping[int, int] = field(default_factory=dict)
    incoming: Evaluation | None = None  # the weights sent, evaluated in the same wave


@dataclass(frozen=True)
class CanaryRequest:
    """During a canary, the candidate travels with the statistics query and ``sites`` serve it."""

    weights: Weights
    sites: tuple[int, ...]


@dataclass(frozen=True)
class Serving:
    """``adaptation=clustered``: the live concept models travel with the statistics query;
    a site serves ``models[assignment[site]]`` (``models[default]`` when it has no cluster
    yet) and scores every one of them on its new window."""

    models: Mapping[int, Weights]
    assignment: Mapping[int, int]
    default: int


@dataclass(frozen=True)
class CollectedStats:
    """Every site's statistics for a period, and how many sites' were rejected.

    ``model_scores``: with a :class:`Serving`, each site's (correct, examples) under every
    live model on its new window, by cluster."""

    stats: PeriodStats
    rejected: int
    model_scores: Mapping[int, Mapping[int, tuple[int, int]]] = field(default_factory=dict)


class Federation(Protocol):
    """What the retraining core asks of the sites. ``server_round`` numbers the request (the
    run's training rounds so far); ``period`` names the monitoring period whose windows the
    sites use."""

    def train_round(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        drifted: frozenset[int] = frozenset(),
        sites: frozenset[int] | None = None,
        evaluate_incoming: bool = False,
        since: Mapping[int, int] | None = None,
        trainable: frozenset[str] | None = None,
        anchor: Weights | None = None,
    ) -> TrainedRound:
        """Sample sites, train ``weights`` on their windows of ``period``, aggregate.

        ``drifted``: the sites the monitor found drifted in ``period``. Their updates are
        large for a reason (their data changed), so reply validation bounds them instead of
        throwing them out as attacks. ``sites``: only these sites train (a cluster's model);
        None: any site. ``evaluate_incoming``: the sampled sites also evaluate ``weights`` on
        their holdouts before training, returned as :attr:`TrainedRound.incoming` (what
        :meth:`evaluate` of ``weights`` would return over those sites, without its own
        message wave). ``since``: per site, the first period whose window it trains on, with
        every later one through ``period`` (a cluster's buffer); a site not in it trains on
        ``period``'s window alone. :attr:`TrainedRound.examples` counts all of them.
        ``trainable``: only these arrays train this round (the transfer strategy's head), the
        others keep the values sent; None: every array the run trains. ``anchor``: the sites'
        local loss gains ``retrain.anchor_mu / 2 * ||w - anchor||^2`` (a proximal term
        anchored at the serving model); None: no such term."""
        ...

    def evaluate(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        memory: tuple[int, ...] = (),
    ) -> Evaluation:
        """Evaluate ``weights`` on the sites' holdouts of ``period``; with ``memory``, on the
        holdouts of those earlier periods together instead (what a candidate may have
        forgotten, ``release.memory_periods``)."""
        ...

    def collect_stats(
        self,
        server_round: int,
        weights: Weights,
        period: int,
        edges: HistogramEdges,
        canary: CanaryRequest | None = None,
        serving: Serving | None = None,
    ) -> CollectedStats:
        """Every site scores the model it serves on its new window of ``period`` and sends
        summable statistics on ``edges`` (no edges: period 0, before they are fixed).
        With ``serving``, sites serve their cluster's model instead of ``weights`` and score
        every live model."""
        ...


class ModelFactory(Protocol):
    """The task's model as the server needs it: fresh weights, and the final model's file.

    ``trained``: the names of the arrays a round trains, when some are frozen
    (``train.freeze``); None when every array trains. The registry records them. ``head``:
    the arrays of the model's last layer, which the transfer strategy re-initialises and
    trains alone."""

    trained: tuple[str, ...] | None
    head: tuple[str, ...]

    def fresh(self, seed: int) -> Weights:
        """A newly initialised model's weights, the same for the same seed in every process."""
        ...

    def save(self, weights: Weights, path: Path) -> None:
        """Write ``weights`` as the task's model file (safetensors, atomically)."""
        ...


def digest(weights: Weights) -> str:
    """A fingerprint of the weights: names, dtypes, shapes and bytes.

    >>> a = {"w": np.zeros(3, dtype=np.float32)}
    >>> digest(a) == digest({"w": np.zeros(3, dtype=np.float32)})
    True
    >>> digest(a) == digest({"w": np.ones(3, dtype=np.float32)})
    False
    >>> b = {"w": np.zeros(1), "b": np.ones(1)}
    >>> digest(b) == digest({"b": np.ones(1), "w": np.zeros(1)})
    True
    """
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):  # files and records need not keep the names' order
        array = np.ascontiguousarray(weights[name])
        h.update(f"{name}:{array.dtype}:{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()

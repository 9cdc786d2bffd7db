"""The retraining core: the period loop, retrains, resume and the release lifecycle.

Nothing here imports Flower. The controller (:mod:`fedretrain.retraining.controller`) reaches
the sites only through the :class:`~fedretrain.retraining.port.Federation` port, which
:mod:`fedretrain.flower.federation` implements on a Flower grid and the unit tests implement
with numpy. See ``docs/architecture.md``.
"""

from fedretrain.retraining.drift_watch import DriftWatch, Observation
from fedretrain.retraining.lifecycle import Canary, Lifecycle, ReleaseState, Watch
from fedretrain.retraining.port import (
    CanaryRequest,
    CollectedStats,
    Evaluation,
    Federation,
    SiteScores,
    TrainedRound,
    Weights,
)

__all__ = [
    "Canary",
    "CanaryRequest",
    "CollectedStats",
    "DriftWatch",
    "Evaluation",
    "Federation",
    "Lifecycle",
    "Observation",
    "ReleaseState",
    "SiteScores",
    "TrainedRound",
    "Watch",
    "Weights",
]

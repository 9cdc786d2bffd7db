"""Serving a recurring concept again: the former champion that wins on current data."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from fedretrain.config import RetrainConfig
from fedretrain.registry import Registry, Status
from fedretrain.retraining.outcome import Outcome
from fedretrain.retraining.port import Weights

log = logging.getLogger(__name__)


def former_champion(
    registry: Registry,
    config: RetrainConfig,
    validate: Callable[[Weights], float],
    serving_acc: float,
) -> Outcome | None:
    """The former champion that does best on current data, if it is back (scores within
    ``reuse_tolerance`` of its stored accuracy) and beats the serving model by ``reuse_margin``.

    Only former champions (retired) may serve again: a rejected or rolled-back version was
    judged unfit, and the champion is what serves now. ``validate`` gives a model's federated
    validation accuracy on the period; the last ``max_stored`` former champions are tried.
    """
    r = config
    retired = [v for v in registry.versions() if v.status is Status.retired]
    best: tuple[float, int, Weights] | None = None
    for stored in retired[-r.max_stored :] if r.max_stored else []:
        stored_acc = stored.metrics.get("validation_accuracy", math.nan)
        weights = registry.load(stored.version)
        acc = validate(weights)
        if acc >= stored_acc - r.reuse_tolerance and (best is None or acc > best[0]):
            best = (acc, stored.version, weights)
    if best is None or best[0] < serving_acc + r.reuse_margin:
        return None
    acc, version, chosen = best
    log.info("reuse v%d: %.4f vs the serving model's %.4f", version, acc, serving_acc)
    return Outcome(chosen, f"reuse v{version}", 0, acc, version)

"""What a retrain produced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedretrain.retraining.port import Weights


@dataclass(frozen=True)
class Outcome:
    """What a retrain produced: the weights to serve and how they were obtained."""

    weights: Weights
    action: str  # initial, warm, reinit, reuse vN, with ", rejected" when the gate refused it
    rounds: int  # federated rounds run (message waves), trained or not
    validation_accuracy: float
    reused_version: int | None = None
    epsilon_by_site: dict[int, float] | None = None  # DP-SGD: what it cost each site
    # Lineage: rounds in which some site's update was aggregated, and each such site's
    # training examples (its window or partition).
    trained_rounds: int = 0
    samples: Mapping[int, int] = field(default_factory=dict)


REJECTED = ", rejected"  # appended to an outcome's action when the gate refused its candidate


def released(action: str) -> bool:
    """Whether a retrain with this action changed what serves (a promotion or a canary).

    >>> released("warm"), released("reuse v1"), released("warm, rejected")
    (True, True, False)
    """
    return not action.endswith(REJECTED)

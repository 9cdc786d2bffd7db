"""The ``train`` config group: local training at each site (fedretrain.training runs it).

A leaf beside the schema's users (``training``, ``privacy.plan``, ``privacy.dp_sgd``), so that
they need not import the root config, which imports the privacy package.

>>> TrainConfig(lr=0.1, lr_schedule=LrSchedule.cosine).lr_schedule.value
'cosine'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from fedretrain.errors import raise_failed


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class LrSchedule(str, Enum):
    """How the client learning rate changes over server rounds (local runs are too short)."""

    constant = "constant"
    exponential = "exponential"  # lr * gamma ** (round - 1)
    cosine = "cosine"  # from lr down to lr_min at the last round


@dataclass
class TrainConfig:
    """Local training at each site."""

    optimizer: Optimizer = Optimizer.sgd
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    local_epochs: int = 3
    batch_size: int = 16
    lr_schedule: LrSchedule = LrSchedule.constant
    lr_gamma: float = 0.95
    lr_min: float = 0.0
    max_grad_norm: float | None = None  # clip each step's gradient norm; null disables
    proximal_mu: float = 0.0  # FedProx's mu; used by strategy=fedprox
    augment: bool = False  # image tasks: random shifts and rotations of training batches
    augment_shift: int = 1  # pixels, each direction (an eighth of the 8x8 digits)
    augment_degrees: float = 10.0  # either way
    # Fine-tuning (fedretrain.finetune): parameters that do not train, by name, module prefix
    # or fnmatch pattern ("feature extraction": freeze all but the head); and learning-rate
    # multipliers by the same patterns, "pattern:multiplier" (e.g. [features:0.1]).
    freeze: list[str] = field(default_factory=list)
    lr_groups: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        raise_failed(
            (self.lr > 0, f"train.lr={self.lr}: must be positive, e.g. 0.05"),
            (0 <= self.momentum < 1, f"train.momentum={self.momentum}: must lie in [0, 1)"),
            (self.weight_decay >= 0, f"train.weight_decay={self.weight_decay}: must be >= 0"),
            (self.local_epochs >= 1, f"train.local_epochs={self.local_epochs}: must be >= 1"),
            (self.batch_size >= 1, f"train.batch_size={self.batch_size}: must be >= 1"),
            (0 < self.lr_gamma <= 1, f"train.lr_gamma={self.lr_gamma}: must lie in (0, 1]"),
            (
                0 <= self.lr_min <= max(self.lr, 0),
                f"train.lr_min={self.lr_min}: must lie in [0, train.lr]",
            ),
            (
                self.max_grad_norm is None or self.max_grad_norm > 0,
                f"train.max_grad_norm={self.max_grad_norm}: must be positive, or null to disable",
            ),
            (self.proximal_mu >= 0, f"train.proximal_mu={self.proximal_mu}: must be >= 0"),
            (
                self.augment_shift >= 0,
                f"train.augment_shift={self.augment_shift}: must be >= 0 (pixels)",
            ),
            (
                0 <= self.augment_degrees <= 180,
                f"train.augment_degrees={self.augment_degrees}: must lie in [0, 180]",
            ),
            *(_lr_group_check(entry) for entry in self.lr_groups),
        )

    @property
    def lr_multipliers(self) -> dict[str, float]:
        """``lr_groups`` as pattern: multiplier, in their order.

        >>> TrainConfig(lr_groups=["features:0.1", "classifier.*.bias:2"]).lr_multipliers
        {'features': 0.1, 'classifier.*.bias': 2.0}
        """
        return {p: float(s) for p, _, s in (e.rpartition(":") for e in self.lr_groups)}


def _lr_group_check(entry: str) -> tuple[bool, str]:
    pattern, _, text = entry.rpartition(":")
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    return (
        bool(pattern) and math.isfinite(scale) and scale > 0,
        f"train.lr_groups entry {entry!r}: must be 'pattern:multiplier' with a positive "
        "multiplier, e.g. train.lr_groups=[features:0.1] (freeze a parameter with train.freeze "
        "instead)",
    )

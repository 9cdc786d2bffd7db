"""Model factories for the built-in tasks.

A model factory is any callable ``factory(input_shape, num_classes, **kwargs) -> nn.Module``;
a task's ``model`` config names one with ``_target_`` and ``_partial_: true`` and the site
supplies the shape and class count of its data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 single-channel digits: two 3x3 convolutions, one pooling, two dense.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)``; height and width must be even.
    num_classes : int
        Number of output logits.
    channels : sequence of int
        Output channels of the two convolutions.
    hidden : int
        Width of the dense hidden layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"DigitsCNN needs (channels, height, width) inputs, got {tuple(input_shape)}; "
                "use fedretrain.models.MLP for tabular data"
            )
        c_in, height, width = input_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c_in, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * (height // 2) * (width // 2), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected network for tabular features.

    ``hidden=None`` gives FedDrift's FNN, one hidden layer twice as wide as the input
    (``d -> 2d -> classes``), the reference network of the drift benchmarks.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        in_features = math.prod(input_shape)
        widths = list(hidden) if hidden is not None else [2 * in_features]
        layers: list[nn.Module] = [nn.Flatten()]
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

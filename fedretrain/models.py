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


def _constant(value: float | Sequence[float] | None, default: float) -> torch.Tensor:
    """A float32 tensor of a number or a sequence (a Hydra ``ListConfig`` included)."""
    if value is None:
        return torch.tensor(default)
    if isinstance(value, int | float):
        return torch.tensor(float(value))
    return torch.tensor([float(v) for v in value])


class MLP(nn.Module):
    """A fully connected network for tabular features.

    ``hidden=None`` gives FedDrift's FNN, one hidden layer twice as wide as the input
    (``d -> 2d -> classes``), the reference network of the drift benchmarks.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one sample; flattened.
    num_classes : int
        Number of output logits.
    hidden : sequence of int or None
        Widths of the hidden layers; ``None`` for one layer of ``2 * d``.
    input_mean, input_std : float, sequence of float, or None
        A fixed standardisation ``(x - input_mean) / input_std`` (scalars or one value per
        feature) applied before the first layer; ``None`` (the default) leaves inputs as they
        are. Features far from zero mean and unit scale (SEA's ``U[0, 10]``) slow plain SGD
        so much that a model trained on one window plateaus well below one refined over
        many. The values are constants of the task, not learned and not in the state dict,
        so sites exchange exactly the same arrays as without them.

    >>> net = MLP((3,), 2, input_mean=5.0, input_std=2.0)
    >>> net.standardise(torch.tensor([[5.0, 7.0, 1.0]]))
    tensor([[ 0.,  1., -2.]])
    >>> sorted(net.state_dict()) == sorted(MLP((3,), 2).state_dict())
    True
    """

    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] | None = None,
        input_mean: float | Sequence[float] | None = None,
        input_std: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        in_features = math.prod(input_shape)
        self.input_mean = input_mean
        self.input_std = input_std
        mean = _constant(input_mean, 0.0)
        std = _constant(input_std, 1.0)
        for name, value in (("input_mean", mean), ("input_std", std)):
            if value.dim() > 1 or value.numel() not in (1, in_features):
                raise ValueError(
                    f"MLP: {name} must be a number or one value per feature ({in_features}), "
                    f"got {value.tolist()}"
                )
        if not bool((std > 0).all()):
            raise ValueError(f"MLP: input_std must be positive, got {std.tolist()}")
        self._standardise = input_mean is not None or input_std is not None
        # Not persistent: constants of the task, so the exchanged state dict is unchanged.
        self.register_buffer("_mean", mean, persistent=False)
        self.register_buffer("_std", std, persistent=False)
        widths = list(hidden) if hidden is not None else [2 * in_features]
        layers: list[nn.Module] = [nn.Flatten()]
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened inputs as the first layer sees them."""
        x = x.flatten(1)
        return (x - self._mean) / self._std if self._standardise else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(x))

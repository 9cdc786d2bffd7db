"""Image augmentation at the sites (``train.augment``): random shifts and small rotations.

Each training batch of images ``(n, channels, height, width)`` is moved, image by image, by
whole pixels (up to ``train.augment_shift`` in each direction) and rotated about its centre
by up to ``train.augment_degrees`` either way; what leaves the frame is lost and what enters it
is zero (the background of the shipped digits). The draws come from the training generator, so
a seeded run repeats. Only training batches are augmented: evaluation, the monitor's
statistics and the gate see the images as they are.

>>> import torch
>>> image = torch.zeros(1, 1, 5, 5)
>>> image[0, 0, 2, 2] = 1.0
>>> moved = shift_rotate(image, torch.tensor([1.0]), torch.tensor([-2.0]), torch.tensor([0.0]))
>>> [(int(r), int(c)) for r, c in moved[0, 0].nonzero()]  # down 1, left 2
[(3, 0)]
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F  # noqa: N812 - torch's own idiom


def shift_rotate(
    x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, degrees: torch.Tensor
) -> torch.Tensor:
    """Each image of ``x`` moved by ``rows`` and ``cols`` pixels (down and right positive) and
    rotated by ``degrees`` (counter-clockwise), zeros filling in."""
    n, _, height, width = x.shape
    theta = degrees.to(x) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # grid_sample reads the output pixel at p from the input at A p + t (normalised [-1, 1]
    # coordinates, x across, y down): the inverse of the motion wanted.
    matrix = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    matrix[:, 0, 0], matrix[:, 0, 1] = cos, -sin * height / width
    matrix[:, 1, 0], matrix[:, 1, 1] = sin * width / height, cos
    matrix[:, 0, 2] = -2.0 * cols.to(x) / width
    matrix[:, 1, 2] = -2.0 * rows.to(x) / height
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(
    x: torch.Tensor, shift: int, degrees: float, generator: torch.Generator
) -> torch.Tensor:
    """A random shift of up to ``shift`` pixels and rotation of up to ``degrees`` per image.

    Raises
    ------
    ValueError
        If ``x`` is not a batch of images ``(n, channels, height, width)``.
    """
    if x.ndim != 4:
        raise ValueError(
            f"train.augment shifts and rotates images (n, channels, height, width); this task's "
            f"inputs have shape {tuple(x.shape[1:])}: set train.augment=false"
        )
    n = x.shape[0]
    rows = torch.randint(-shift, shift + 1, (n,), generator=generator)
    cols = torch.randint(-shift, shift + 1, (n,), generator=generator)
    angles = (torch.rand(n, generator=generator) * 2.0 - 1.0) * degrees
    return shift_rotate(x, rows.float(), cols.float(), angles)

"""Poisson sampling of DP-SGD batches: each record joins each step's batch independently.

The RDP analysis of DP-SGD assumes this sampling; shuffled fixed-size batches can overstate
privacy several-fold. Batch sizes vary (a batch can even be empty), which is why the noisy
gradient sum is divided by the *expected* batch size. Drawn here as one boolean mask per step
from a torch generator, vectorised, instead of through Opacus's DataLoader.

>>> g = torch.Generator().manual_seed(0)
>>> batches = poisson_batches(1000, 0.02, steps=500, generator=g)
>>> len(batches), 19 < sum(len(b) for b in batches) / 500 < 21
(500, True)
"""

from __future__ import annotations

import torch

_MAX_DRAW = 1 << 22  # uniforms drawn at once: bounds memory for large datasets


def poisson_batches(
    num_samples: int, sample_rate: float, steps: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Index tensors (int64, sorted) of ``steps`` Poisson batches over ``num_samples`` records.

    Deterministic given ``generator``'s state: the same state gives the same batches, which is
    what lets tests replay a DP run's batches through a plain training loop.
    """
    if not 0 <= sample_rate <= 1:
        raise ValueError(f"sample_rate={sample_rate}: must lie in [0, 1]")
    rows = max(1, _MAX_DRAW // max(num_samples, 1))
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        chunk = min(rows, steps - len(batches))
        mask = torch.rand((chunk, num_samples), generator=generator) < sample_rate
        batches.extend(row.nonzero().flatten() for row in mask)
    return batches

"""Aggregation maths that Flower's strategies do not have: plain numpy.

>>> import numpy as np
>>> ref = {"w": np.zeros(2)}
>>> ups = [{"w": np.array([3.0, 4.0])}, {"w": np.array([0.0, 1.0])}]
>>> norm_bounded_mean(ref, ups, [1, 1], max_norm=1.0)["w"].round(6).tolist()  # (.6,.8), (0,1)
[0.3, 0.9]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedretrain.validation import clip_update


def norm_bounded_mean(
    reference: Mapping[str, np.ndarray],
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    max_norm: float,
) -> dict[str, np.ndarray]:
    """FedAvg of updates each clipped to ``||update - reference|| <= max_norm`` first.

    One site can then move the model by at most ``max_norm * its weight share``, whatever it
    sends (Sun et al., 2019, "Can you really backdoor federated learning?").
    """
    if not updates:
        raise ValueError("no updates to aggregate")
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    total = float(np.sum(weights))
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    clipped = [clip_update(reference, u, max_norm) for u in updates]
    return {
        name: np.sum(
            [w / total * c[name].astype(np.float64) for w, c in zip(weights, clipped, strict=True)],
            axis=0,
        ).astype(ref.dtype)
        for name, ref in reference.items()
    }

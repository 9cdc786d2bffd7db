"""An attack harness for simulation: some sites misbehave on purpose.

Which sites attack is fixed per run by the seed; what they send is a pure function of the
global model, their honest update and a generator, so an attack is repeatable.

>>> import numpy as np
>>> sorted(attackers(10, 0.2, seed=0))
[3, 7]
>>> g, w = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}
>>> poison(g, w, AttackKind.sign_flip, np.random.default_rng(0), scale=3.0)["w"].tolist()
[-3.0, -3.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from fedretrain.errors import raise_failed


class AttackKind(str, Enum):
    none = "none"
    nan = "nan"  # every float array NaN
    inf = "inf"  # every float array +inf
    scale = "scale"  # update multiplied by `scale`
    sign_flip = "sign_flip"  # update multiplied by -`scale`
    gaussian = "gaussian"  # update replaced by N(0, noise_std^2) noise
    num_examples_lie = "num_examples_lie"  # honest update, claims `claimed_examples`
    label_flip = "label_flip"  # trains honestly on labels mapped y -> K-1-y
    bad_stats = "bad_stats"  # drift statistics with negative counts and a NaN sum
    bad_scores = "bad_scores"  # adaptation=clustered: more correct answers than examples
    slow = "slow"  # honest, but each train reply comes `delay_s` late


def corrupt_stats(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a ``bad_stats`` attacker sends as its window's statistics: counts that would drag
    the global histogram and error counts down, and a NaN that would poison every sum.

    >>> out = corrupt_stats({"hist": np.ones((2, 3), dtype=np.int64), "x_sum": np.zeros(2)})
    >>> int(out["hist"].min()), bool(np.isnan(out["x_sum"]).any())
    (-1000, True)
    """
    out = dict(arrays)
    if "hist" in out:
        out["hist"] = out["hist"] - 1001
    if "x_sum" in out:
        out["x_sum"] = np.full_like(out["x_sum"], np.nan, dtype=np.float64)
    return out


def corrupt_scores(table: np.ndarray) -> np.ndarray:
    """What a ``bad_scores`` attacker sends as its per-model scores (cluster, correct,
    examples): every model right on more examples than the window holds, which would make any
    model look perfect there.

    >>> corrupt_scores(np.array([[0, 7, 10], [1, 2, 10]])).tolist()
    [[0, 20, 10], [1, 20, 10]]
    """
    out = np.array(table, copy=True)
    out[:, 1] = 2 * out[:, 2]
    return out


def attackers(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids that attack: ``round(fraction * num_partitions)`` of them."""
    count = round(fraction * num_partitions)
    order = np.random.default_rng([seed, 7]).permutation(num_partitions)
    return frozenset(int(p) for p in order[:count])


def drops_out(seed: int, partition_id: int, server_round: int, probability: float) -> bool:
    """Whether a site skips this round: independent per site and round, repeatable."""
    if probability <= 0:
        return False
    return bool(np.random.default_rng([seed, 8, partition_id, server_round]).random() < probability)


def poison(
    reference: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    kind: AttackKind,
    rng: np.random.Generator,
    scale: float = 100.0,
    noise_std: float = 10.0,
) -> dict[str, np.ndarray]:
    """What an attacking site sends in place of ``arrays`` (float arrays only are touched)."""
    out = {}
    for name, honest in arrays.items():
        ref = reference[name]
        if not np.issubdtype(honest.dtype, np.floating):
            out[name] = honest
            continue
        delta = honest - ref
        if kind is AttackKind.nan:
            sent = np.full_like(honest, np.nan)
        elif kind is AttackKind.inf:
            sent = np.full_like(honest, np.inf)
        elif kind is AttackKind.scale:
            sent = ref + scale * delta
        elif kind is AttackKind.sign_flip:
            sent = ref - scale * delta
        elif kind is AttackKind.gaussian:
            sent = ref + rng.normal(0.0, noise_std, size=honest.shape)
        else:
            sent = honest
        out[name] = np.asarray(sent, dtype=honest.dtype)
    return out


@dataclass
class AttackConfig:
    """The ``attack`` config group. Simulation only: a share of sites misbehave."""

    kind: AttackKind = AttackKind.none
    fraction: float = 0.0  # share of sites that attack
    scale: float = 100.0  # for scale and sign_flip
    noise_std: float = 10.0  # for gaussian
    claimed_examples: int = 1_000_000_000  # for num_examples_lie
    dropout: float = 0.0  # every site skips each round with this probability
    delay_s: float = 30.0  # for slow: how late each train reply is
    from_period: int = 0  # drift scenarios: attackers behave until this monitoring period

    def __post_init__(self) -> None:
        raise_failed(
            (0 <= self.fraction <= 1, f"attack.fraction={self.fraction}: must lie in [0, 1]"),
            (self.from_period >= 0, f"attack.from_period={self.from_period}: must be >= 0"),
            (0 <= self.dropout < 1, f"attack.dropout={self.dropout}: must lie in [0, 1)"),
            (self.noise_std >= 0, f"attack.noise_std={self.noise_std}: must be >= 0"),
            (self.delay_s >= 0, f"attack.delay_s={self.delay_s}: must be >= 0"),
        )

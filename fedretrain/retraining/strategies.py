"""How a retrain makes its candidate: ``retrain.strategy`` and the tournament of ``auto``.

``incremental`` fine-tunes the serving model (a warm start). ``full`` trains fresh weights on
the windows each site kept since the change, at most ``retrain.buffer_periods`` of them.
``transfer`` keeps the serving model's backbone frozen and re-initialises its head (the
arrays :attr:`~fedretrain.retraining.port.ModelFactory.head` names), so only the head trains.
``reuse`` serves the stored version that does best on current data, and fine-tunes when no
stored version is back. ``auto`` reuses a stored version that wins (``retrain.reuse_stored``),
else trains every strategy of ``retrain.candidates`` on the period's windows; federated
validation ranks them, the best goes to the gate, and the others are rejected in the registry
with the standings. A lone incremental candidate keeps the older rule: a warm start that
stalls is abandoned for fresh weights (``retrain.reinit_after``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedretrain.config import RetrainConfig, RetrainStrategy
from fedretrain.retraining.port import Weights

# The action a version's lineage records for each strategy that trains (``trigger``).
ACTIONS = {"incremental": "warm", "full": "full", "transfer": "transfer"}


@dataclass(frozen=True)
class Plan:
    """One candidate's training: which strategy, what it trains, on which windows."""

    name: str  # incremental, full or transfer
    trainable: frozenset[str] | None = None  # transfer: the head; None: the run's arrays
    stall_rule: bool = False  # a stalled warm start re-initialises (auto's lone incremental)
    buffered: bool = False  # trains on each site's windows since the change (full)
    anchored: bool = False  # the proximal term anchored at the serving model (anchor_mu)

    @property
    def action(self) -> str:
        return ACTIONS[self.name]


def plans(retrain: RetrainConfig, head: Sequence[str]) -> list[Plan]:
    """The trainings a retrain runs under ``retrain``, in order of preference (a tie in the
    tournament goes to the earlier one). ``head``: the model's head arrays."""
    strategy = RetrainStrategy(retrain.strategy)
    if strategy is RetrainStrategy.auto:
        names = list(retrain.candidates)
    elif strategy is RetrainStrategy.reuse:
        names = ["incremental"]  # nothing stored is back: fine-tune instead
    else:
        names = [strategy.value]
    stall = strategy is RetrainStrategy.auto and "full" not in names
    anchored = retrain.anchor_mu > 0
    return [
        Plan(
            name,
            trainable=frozenset(head) if name == "transfer" else None,
            stall_rule=stall and name == "incremental",
            buffered=name == "full",
            anchored=anchored and name == "incremental",
        )
        for name in names
    ]


def tries_reuse(retrain: RetrainConfig) -> bool:
    """Whether a retrain first looks for a stored version to serve again."""
    strategy = RetrainStrategy(retrain.strategy)
    return strategy is RetrainStrategy.reuse or (
        strategy is RetrainStrategy.auto and retrain.reuse_stored
    )


def start(plan: Plan, champion: Weights, fresh: Callable[[], Weights]) -> Weights:
    """Where ``plan``'s training starts: the serving model, fresh weights, or the serving
    model with a fresh head."""
    if plan.name == "incremental":
        return champion
    new = fresh()
    if plan.name == "full":
        return new
    assert plan.trainable is not None
    return {k: (new[k] if k in plan.trainable else v) for k, v in champion.items()}


def buffer_start(period: int, change: int, buffer_periods: int) -> int:
    """The first window a ``full`` retrain at ``period`` trains on: the change's period (where
    the trigger first fired), at most ``buffer_periods`` windows back.

    >>> buffer_start(7, 5, 1), buffer_start(7, 5, 3), buffer_start(7, 2, 3)
    (7, 5, 5)
    """
    return max(change, period - buffer_periods + 1)


@dataclass(frozen=True)
class Entry:
    """A tournament candidate, trained and registered."""

    name: str
    version: int
    accuracy: float  # its best federated validation accuracy on the period
    rounds: int


def standings(entries: Sequence[Entry]) -> list[Entry]:
    """Best validation accuracy first; a tie, or no score, goes to the earlier entry."""
    order = {e.name: i for i, e in enumerate(entries)}
    return sorted(
        entries,
        key=lambda e: (-(e.accuracy if math.isfinite(e.accuracy) else -1.0), order[e.name]),
    )


def verdict(ranked: Sequence[Entry]) -> str:
    """Why the first of ``ranked`` won, for the decision log.

    >>> verdict([Entry("full", 4, 0.95, 6), Entry("incremental", 3, 0.91, 8)])
    'full won on federated validation: full v4 0.9500 (6 rounds), incremental v3 0.9100 (8 rounds)'
    """
    listed = ", ".join(
        f"{e.name} v{e.version} {e.accuracy:.4f} ({e.rounds} rounds)" for e in ranked
    )
    return f"{ranked[0].name} won on federated validation: {listed}"

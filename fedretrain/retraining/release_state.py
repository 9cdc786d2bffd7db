"""What the release lifecycle carries from one period to the next, frozen and versioned.

A leaf module: the checkpoint (:mod:`fedretrain.checkpoint`) serialises this state, and the
lifecycle (:mod:`fedretrain.retraining.lifecycle`) acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1  # of ReleaseState.to_dict; 0 is the untyped dicts of checkpoint format 1


@dataclass(frozen=True)
class Canary:
    """A candidate served by ``sites`` from period ``start`` on.

    ``before`` holds each site's prequential (correct, labelled) in the period the gate passed,
    when the champion served everywhere; ``during`` sums them over the canary's periods.
    """

    version: int
    sites: tuple[int, ...]
    start: int
    before: Mapping[int, tuple[int, int]] | None = None
    during: Mapping[int, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Watch:
    """A fresh champion on probation until period ``until``, with the parent it replaced."""

    version: int
    parent: int
    until: int


@dataclass(frozen=True)
class ReleaseState:
    """Everything the lifecycle carries from one period to the next."""

    canary: Canary | None = None
    watch: Watch | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, with the schema version."""
        canary = None
        if self.canary is not None:
            c = self.canary
            canary = {
                "version": c.version,
                "sites": list(c.sites),
                "start": c.start,
                "before": None if c.before is None else _scores_out(c.before),
                "during": _scores_out(c.during),
            }
        watch = None if self.watch is None else vars(self.watch).copy()
        return {"schema": SCHEMA, "canary": canary, "watch": watch}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ReleaseState:
        """Read :meth:`to_dict`'s output (schema 0: checkpoint format 1's canary/watch dicts)."""
        schema = int(record.get("schema", 0))
        if schema > SCHEMA:
            raise ValueError(
                f"release state schema {schema} is newer than this fedretrain's ({SCHEMA}); "
                "upgrade fedretrain to resume this run"
            )
        c, w = record.get("canary"), record.get("watch")
        canary = None
        if c is not None:
            canary = Canary(
                version=int(c["version"]),
                sites=tuple(int(s) for s in c["sites"]),
                start=int(c["start"]),
                before=None if c.get("before") is None else _scores_in(c["before"]),
                during=_scores_in(c.get("during") or {}),
            )
        watch = None
        if w is not None:
            watch = Watch(int(w["version"]), int(w["parent"]), int(w["until"]))
        return cls(canary, watch)


def _scores_out(scores: Mapping[int, tuple[int, int]]) -> dict[str, list[int]]:
    return {str(s): [int(c), int(n)] for s, (c, n) in sorted(scores.items())}


def _scores_in(scores: Mapping[str, Any]) -> dict[int, tuple[int, int]]:
    return {int(s): (int(v[0]), int(v[1])) for s, v in scores.items()}

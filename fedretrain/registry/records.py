"""What the registry holds: a model version with its lineage, and a decision event."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

CLUSTER_ALIAS = "cluster-"  # cluster N's champion: the alias cluster-N


class Status(str, Enum):
    """Where a version stands. Exactly one version is the champion once any exists."""

    candidate = "candidate"  # registered, awaiting the gate or a canary
    champion = "champion"  # the model the sites serve
    retired = "retired"  # was the champion (or a cluster's), replaced by a newer one
    rejected = "rejected"  # a candidate that failed the gate or its canary
    rolled_back = "rolled_back"  # served, then withdrawn (a champion rolled back, a canary ended)


class EventKind(str, Enum):
    """The kinds the registry records itself; callers add their own (trigger, gate, canary)."""

    register = "register"
    alias = "alias"
    promote = "promote"
    reject = "reject"
    rollback = "rollback"
    retire = "retire"  # a cluster's champion superseded by a newer one of its cluster
    migrate = "migrate"  # the file's schema was upgraded (payload: from, to)


@dataclass(frozen=True)
class ModelVersion:
    """One registered model and its lineage.

    Site ids are stored as text: a site given as ``3`` comes back as ``"3"``.

    Parameters
    ----------
    version : int
        1, 2, ... in registration order.
    key : str
        The caller's idempotency key: registering the same key again returns this version.
    parent : int or None
        The version it was trained from (None for a fresh model).
    trigger : str
        What started its training (``initial``, ``drift``, ``schedule``, ``manual``...).
    reason : str
        The trigger's logged reason.
    period : int
        The monitoring period whose data it was trained on.
    rounds : int
        Federated training rounds it took.
    samples : dict of str to int
        Training examples per participating site; its keys are the participating sites.
    config_hash : str
        sha256 of the run's resolved config (:func:`fedretrain.registry.config_hash`).
    metrics : dict of str to float
        Global validation metrics.
    site_metrics : dict of str to dict of str to float
        Validation metrics per site.
    epsilon : dict of str to float
        Cumulative ε per site after its training; empty without differential privacy.
    file : str
        The model file, relative to the run folder.
    sha256 : str
        Hex sha256 of the model file's bytes.
    status : Status
        Where it stands now (the only field that changes after registration).
    created : str
        When it was registered, UTC, ISO 8601.
    cluster : int or None
        ``adaptation=clustered``: the concept cluster it was trained for (None otherwise).
    trained : tuple of str or None
        The arrays its training rounds trained when the run froze the others
        (``train.freeze``); None when every array trained.
    """

    version: int
    key: str
    parent: int | None
    trigger: str
    reason: str
    period: int
    rounds: int
    samples: dict[str, int] = field(hash=False)
    config_hash: str
    metrics: dict[str, float] = field(hash=False)
    site_metrics: dict[str, dict[str, float]] = field(hash=False)
    epsilon: dict[str, float] = field(hash=False)
    file: str
    sha256: str
    status: Status
    created: str
    cluster: int | None = None
    trained: tuple[str, ...] | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        """The participating sites, in the order they were given."""
        return tuple(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "key": self.key,
            "parent": self.parent,
            "trigger": self.trigger,
            "reason": self.reason,
            "period": self.period,
            "rounds": self.rounds,
            "sites": list(self.sites),
            "samples": dict(self.samples),
            "config_hash": self.config_hash,
            "metrics": dict(self.metrics),
            "site_metrics": {s: dict(m) for s, m in self.site_metrics.items()},
            "epsilon": dict(self.epsilon),
            "file": self.file,
            "sha256": self.sha256,
            "status": self.status.value,
            "created": self.created,
            "cluster": self.cluster,
        }


@dataclass(frozen=True)
class Event:
    """One recorded decision; the events table is append-only."""

    id: int
    kind: str
    period: int | None
    version: int | None
    payload: dict[str, Any] = field(hash=False)
    key: str | None
    created: str  # UTC, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "period": self.period,
            "version": self.version,
            "payload": self.payload,
            "key": self.key,
            "created": self.created,
        }


def cluster_alias(cluster: int) -> str:
    """The alias of cluster ``cluster``'s champion.

    >>> cluster_alias(3)
    'cluster-3'
    """
    return f"{CLUSTER_ALIAS}{int(cluster)}"


def alias_cluster(name: str) -> int | None:
    """The cluster a ``cluster-N`` alias names, or None for another name.

    >>> alias_cluster("cluster-12"), alias_cluster("champion"), alias_cluster("cluster-x")
    (12, None, None)
    """
    digits = name.removeprefix(CLUSTER_ALIAS)
    return int(digits) if name.startswith(CLUSTER_ALIAS) and digits.isdigit() else None

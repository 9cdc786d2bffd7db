"""The model registry and the decisions around it: plain Python, SQLite and numpy, no Flower.

- :class:`Registry`: versions with lineage, the ``champion`` and ``candidate`` aliases, and an
  append-only log of decisions, in ``<run_dir>/registry.sqlite`` beside the model files.
- :func:`gate`: may a candidate replace the champion, judged on every site's holdout.
- :func:`choose_canary_sites` and :func:`canary_verdict`: serve a candidate at a few sites first
  and decide from their prequential scores.
"""

from fedretrain.registry.canary import (
    CanaryAction,
    CanaryVerdict,
    canary_size,
    canary_verdict,
    choose_canary_sites,
)
from fedretrain.registry.errors import (
    ModelFileError,
    NotARunFolderError,
    RegistryError,
    SchemaVersionError,
)
from fedretrain.registry.gate import GateDecision, GateRow, gate
from fedretrain.registry.records import (
    Event,
    EventKind,
    ModelVersion,
    Status,
    alias_cluster,
    cluster_alias,
)
from fedretrain.registry.registry import REGISTRY_FILE, Registry, config_hash
from fedretrain.registry.schema import SCHEMA_VERSION
from fedretrain.registry.scores import SiteScore, pooled, summed

__all__ = [
    "REGISTRY_FILE",
    "SCHEMA_VERSION",
    "CanaryAction",
    "CanaryVerdict",
    "Event",
    "EventKind",
    "GateDecision",
    "GateRow",
    "ModelFileError",
    "ModelVersion",
    "NotARunFolderError",
    "Registry",
    "RegistryError",
    "SchemaVersionError",
    "SiteScore",
    "Status",
    "alias_cluster",
    "canary_size",
    "canary_verdict",
    "choose_canary_sites",
    "cluster_alias",
    "config_hash",
    "gate",
    "pooled",
    "summed",
]

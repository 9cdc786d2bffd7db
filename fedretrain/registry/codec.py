"""Rows and JSON of the registry file: lineage dicts in, dataclasses out.

Site ids become text (JSON object keys are text). Lineage numbers keep NaN and infinities, as
the strings ``"nan"``, ``"inf"`` and ``"-inf"``; event payloads are strict JSON, with NaN and
infinities as ``null``, so any JSON reader can follow the log.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import numpy as np

from fedretrain.registry.records import Event, ModelVersion, Status
from fedretrain.registry.scores import Site


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def count(site: Site, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"samples of site {site}: {value!r} is not a whole number >= 0")
    return int(value)


def floats(values: Mapping[str, float]) -> dict[str, float]:
    return {str(name): float(value) for name, value in values.items()}


def dump(value: object) -> str:
    """JSON text that keeps NaN and infinities (as the strings "nan", "inf", "-inf")."""

    def keep(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: keep(x) for k, x in v.items()}
        return v

    return json.dumps(keep(value), allow_nan=False)


def plain(value: Any) -> Any:
    """``value`` in plain JSON types: NaN and infinities become None, numpy scalars numbers."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    return str(value)


def version_from_row(row: sqlite3.Row) -> ModelVersion:
    fields = dict(row)
    for name in ("samples", "metrics", "site_metrics", "epsilon"):
        fields[name] = json.loads(fields[name])
    fields["metrics"] = floats(fields["metrics"])
    fields["site_metrics"] = {s: floats(m) for s, m in fields["site_metrics"].items()}
    fields["epsilon"] = floats(fields["epsilon"])
    fields["status"] = Status(fields["status"])
    trained = fields.get("trained")
    fields["trained"] = None if trained is None else tuple(json.loads(trained))
    return ModelVersion(**fields)


def event_from_row(row: sqlite3.Row) -> Event:
    return Event(**{**dict(row), "payload": json.loads(row["payload"])})

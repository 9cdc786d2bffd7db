"""Plain-text tables for the ``fedretrain`` commands: one cell per value, columns padded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

PAYLOAD_TEXT = 60  # characters of one payload value in a table row


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], header: bool = True) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [[cell(c) for c in row] for row in rows]
    if header:
        cells.insert(0, list(headers))
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def cell(value: object) -> str:
    """One value as table text: ``-`` for nothing, floats to four places, dicts as ``k=v``."""
    if value is None:
        return "-"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def version_label(version: int | None) -> str:
    """``v3`` for version 3, ``-`` for none."""
    return "-" if version is None else f"v{version}"


def metrics_cell(values: dict[str, float]) -> str:
    """A metrics dict as ``name=value`` pairs; empty text when there are none."""
    return cell(values) if values else ""


def events_table(events: Sequence[Any]) -> str:
    """Registry events, one row each, their payload in short (``--json`` gives it whole)."""
    rows = [
        [e.id, e.created, e.kind, e.period, version_label(e.version), payload_cell(e.payload)]
        for e in events
    ]
    return table(["id", "created", "kind", "period", "version", "payload"], rows)


def payload_cell(payload: dict[str, Any], width: int = PAYLOAD_TEXT) -> str:
    """An event's payload on one short line: ``key=value`` pairs, long text cut, lists counted.

    >>> payload_cell({"promote": True, "reason": "x" * 100, "rows": [{"site": 0}, {"site": 1}],
    ...     "candidate_accuracy": 0.96251, "previous": None})
    'promote=True reason=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… \
rows=[2 items] candidate_accuracy=0.9625 previous=-'
    """

    def short(value: object) -> str:
        if isinstance(value, list | tuple) and any(isinstance(v, dict) for v in value):
            return f"[{len(value)} items]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {short(v)}" for k, v in value.items()) + "}"
        text = cell(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    return " ".join(f"{key}={short(value)}" for key, value in payload.items()) or "-"

"""The run's CSV and JSON-lines logs: written whole and atomically, cut back on resume.

``metrics.csv``, ``timeline.csv``, ``privacy.csv``, ``rejections.csv`` and ``decisions.jsonl``
grow a row at a time. A CSV is rewritten whole (:func:`write_rows`, atomically, so a kill leaves
the old file or the new one); resume cuts each log back to the last checkpoint with
:func:`cut_csv` and :func:`cut_jsonl` and reads rows back with :func:`from_row`.
"""

from __future__ import annotations

import csv
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from fedretrain.atomic import atomic_replace

T = TypeVar("T")


def write_rows(path: Path, rows: Sequence[Any], kind: type | None = None) -> None:
    """Write dataclass ``rows`` as the CSV at ``path``: a header of field names (those of
    ``kind``, which lets no rows still write a header), NaN and None as empty cells (as pandas
    writes them), atomically.

    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Row:
    ...     a: int
    ...     b: float
    ...     c: str | None = None
    >>> path = Path(tempfile.mkdtemp()) / "rows.csv"
    >>> write_rows(path, [Row(1, 0.5), Row(2, math.nan, "x")])
    >>> print(path.read_text(), end="")
    a,b,c
    1,0.5,
    2,,x
    >>> [from_row(Row, r) for r in csv.DictReader(path.open())][1]
    Row(a=2, b=nan, c='x')
    """
    if not rows and kind is None:
        return
    header = [f.name for f in fields(kind or rows[0])]

    def cell(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return value

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows([cell(getattr(row, name)) for name in header] for row in rows)

    atomic_replace(path, write)


def cut_csv(path: Path, keep: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """Rewrite the CSV at ``path`` with only the rows ``keep`` accepts; return them."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        # A kill in the middle of an append leaves a torn last row: it has missing cells.
        whole = [row for row in reader if None not in row.values() and None not in row]
        rows = [row for row in whole if keep(row)]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as out:
            writer = csv.DictWriter(out, header)
            writer.writeheader()
            writer.writerows(rows)

    atomic_replace(path, write)
    return rows


def cut_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite the JSON-lines file at ``path`` with only the records ``keep`` accepts."""
    if not path.exists():
        return
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill in the middle of an append
    text = "".join(json.dumps(r) + "\n" for r in records if keep(r))
    atomic_replace(path, lambda tmp: tmp.write_text(text))


def from_row(cls: type[T], row: Mapping[str, str]) -> T:
    """A dataclass instance from a CSV row (NaN as an empty cell or ``nan``, None as empty)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in row:
            values[f.name] = _parse(row[f.name], hints[f.name])
    return cls(**values)


def _parse(text: str, kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if text == "" else _parse(text, options[0])
    if kind is bool:
        return text == "True"
    if kind is int:
        return int(float(text))
    if kind is float:
        return math.nan if text in ("", "nan", "NaN") else float(text)
    return text

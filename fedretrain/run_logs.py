"""The run's CSV and JSON-lines logs: appended a row at a time, cut back on resume.

``metrics.csv``, ``timeline.csv``, ``privacy.csv``, ``rejections.csv`` and ``decisions.jsonl``
grow a row at a time (:func:`append_row`: one write per row, so a period costs the same at the
thousandth period as at the first; a kill can at worst tear the last line). Resume cuts each
log back to the last checkpoint with :func:`restore_rows`, :func:`cut_csv` and
:func:`cut_jsonl`, which drop a torn line, and reads rows back with :func:`from_row`;
:func:`write_rows` writes a whole CSV atomically.
"""

from __future__ import annotations

import csv
import io
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

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows([_cell(getattr(row, name)) for name in header] for row in rows)

    atomic_replace(path, write)


def append_row(path: Path, row: Any) -> None:
    """Append the dataclass ``row`` to the CSV at ``path`` in one write, with a header of its
    field names first when the file is new or empty; cells as :func:`write_rows` writes them.

    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Row:
    ...     a: int
    ...     b: float
    >>> path = Path(tempfile.mkdtemp()) / "rows.csv"
    >>> append_row(path, Row(1, 0.5)); append_row(path, Row(2, math.nan))
    >>> print(path.read_text(), end="")
    a,b
    1,0.5
    2,
    """
    header = [f.name for f in fields(row)]
    text = io.StringIO()
    writer = csv.writer(text)
    if not path.exists() or path.stat().st_size == 0:
        writer.writerow(header)
    writer.writerow([_cell(getattr(row, name)) for name in header])
    with path.open("a", newline="") as handle:
        handle.write(text.getvalue())


def restore_rows(path: Path, kind: type[T], keep: Callable[[dict[str, str]], bool]) -> list[T]:
    """Resume: cut the CSV at ``path`` to the rows ``keep`` accepts and return them as ``kind``.
    A file begun with other columns (by an older fedretrain) is rewritten with ``kind``'s, so
    that the rows appended after it line up with its header."""
    rows = [from_row(kind, r) for r in cut_csv(path, keep)]
    if path.exists():
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if header != [f.name for f in fields(kind)]:  # type: ignore[arg-type]
            write_rows(path, rows, kind)
    return rows


def cut_csv(path: Path, keep: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """Rewrite the CSV at ``path`` with only the rows ``keep`` accepts; return them."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        text = handle.read()
    if text and not text.endswith("\n"):  # a kill in the middle of an append: a torn line
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    # A torn row can also have missing cells.
    whole = [row for row in reader if None not in row.values() and None not in row]
    rows = [row for row in whole if keep(row)]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as out:
            writer = csv.DictWriter(out, header)
            writer.writeheader()
            writer.writerows(rows)

    atomic_replace(path, write)
    return rows


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


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

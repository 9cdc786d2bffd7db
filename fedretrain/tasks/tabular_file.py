"""Bring your own data: one CSV or Parquet table with a label column, read with pandas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedretrain.tasks.dataset import ArrayDataset

_READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def load_table(
    path: str,
    label_column: str = "label",
    feature_columns: Sequence[str] | None = None,
    standardize: bool = True,
    group_column: str | None = None,
) -> ArrayDataset:
    """Read a table whose features are numeric and whose label column holds the classes.

    Labels may be any values (strings, ints); they are mapped to ``0..K-1`` in sorted order so
    that every site that reads the same file agrees on the classes. ``standardize`` rescales
    each feature to zero mean and unit variance over the whole table, which an MLP needs.
    ``group_column`` names a column of groups of users (any values, mapped to ``0..G-1`` in
    sorted order like the labels); it is not a feature, and the gate compares models group by
    group (``release.group_margin``).
    """
    file = Path(path).expanduser()
    reader = _READERS.get(file.suffix.lower())
    if reader is None:
        raise ValueError(
            f"{file}: unsupported file type {file.suffix!r}; use one of {sorted(_READERS)}"
        )
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file; set task.dataset.path to your table")
    frame = reader(file)
    if label_column not in frame.columns:
        raise ValueError(
            f"{file}: no label column {label_column!r}; columns are {list(frame.columns)}. "
            "Set task.dataset.label_column."
        )
    if group_column is not None and group_column not in frame.columns:
        raise ValueError(
            f"{file}: no group column {group_column!r}; columns are {list(frame.columns)}. "
            "Set task.dataset.group_column, or null for no groups."
        )
    columns = (
        list(feature_columns)
        if feature_columns
        else [c for c in frame.columns if c not in (label_column, group_column)]
    )
    if group_column is not None and group_column in columns:
        raise ValueError(f"{file}: the group column {group_column!r} cannot also be a feature")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{file}: feature columns {missing} not found in {list(frame.columns)}")
    features = frame[columns]
    non_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise ValueError(
            f"{file}: feature columns {non_numeric} are not numeric; encode them first or "
            "leave them out with task.dataset.feature_columns"
        )
    x = features.to_numpy(dtype=np.float32)
    bad_rows = ~np.isfinite(x).all(axis=1) | frame[label_column].isna().to_numpy()
    if group_column is not None:
        bad_rows |= frame[group_column].isna().to_numpy()
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        # A CSV's data row i is on line i + 2 (the header is line 1) unless blank lines were
        # skipped, so the line is counted from the file itself; a Parquet file has rows only.
        where = (
            f"line {_line_of(file, first)}" if file.suffix.lower() == ".csv" else f"row {first + 1}"
        )
        raise ValueError(
            f"{file}: {int(bad_rows.sum())} rows have missing or non-finite values "
            f"(first at {where}); clean or drop them"
        )
    if standardize:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    classes, y = np.unique(frame[label_column].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{file}: the label column {label_column!r} holds a single class")
    if group_column is None:
        return ArrayDataset(x, y.astype(np.int64), num_classes=len(classes))
    names, groups = np.unique(frame[group_column].to_numpy(), return_inverse=True)
    return ArrayDataset(x, y.astype(np.int64), len(classes), groups.astype(np.int64), len(names))


def _line_of(file: Path, row: int) -> int:
    """The 1-based line of a CSV file on which data row ``row`` (0-based, as pandas reads it:
    after the header, blank lines skipped) starts; quoted fields that span lines are counted."""
    import csv

    with file.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)  # the header
        start = reader.line_num + 1
        seen = 0
        for fields in reader:
            if any(fields):
                if seen == row:
                    return start
                seen += 1
            start = reader.line_num + 1
    return row + 2

"""What a site's data file must hold, and the check of one table against it.

:func:`check_frame` is a pure function of a DataFrame: it keeps the good rows as arrays and
counts the bad ones by :class:`RowIssue`, or rejects the whole table with a
:class:`FileIssue`. :class:`fedretrain.deploy.folder.SiteFolder` applies it file by file.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd


class RowIssue(str, Enum):
    """Why a row of an otherwise good file was dropped."""

    MISSING_FEATURE = "missing_feature"
    NON_NUMERIC_FEATURE = "non_numeric_feature"
    NON_FINITE_FEATURE = "non_finite_feature"
    MISSING_LABEL = "missing_label"
    UNKNOWN_LABEL = "unknown_label"
    MISSING_GROUP = "missing_group"
    UNKNOWN_GROUP = "unknown_group"
    BAD_TIMESTAMP = "bad_timestamp"


class FileIssue(str, Enum):
    """Why a whole file was quarantined."""

    UNREADABLE = "unreadable"
    MISSING_COLUMNS = "missing_columns"
    NON_NUMERIC_COLUMN = "non_numeric_column"
    TOO_MANY_BAD_ROWS = "too_many_bad_rows"


@dataclass(frozen=True)
class FolderSchema:
    """What every data file must hold.

    Parameters
    ----------
    features : sequence of str
        Feature columns, in the order of ``x``'s columns. Extra columns in a file are ignored.
    label : str
        The label column.
    labels : sequence of int or str
        The allowed label values. ``y`` holds each row's *position* in this sequence (its
        class index): with ``labels=(0, 1, 2)`` that is the value itself.
    timestamp : str, optional
        A column that orders the rows of a period (anything ``pandas.to_datetime`` parses;
        numbers are Unix seconds). Without it rows keep arrival order: files by modification
        time, then name, rows as in the file.
    group : str, optional
        A column naming each row's group of users (not a feature): the gate compares models
        group by group (``release.group_margin``).
    groups : sequence of int or str
        With ``group``, the allowed group values, the same at every site: a row's group is its
        value's position here (a row with another value is dropped, ``unknown_group``).

    Examples
    --------
    >>> FolderSchema(features=["x0", "x1"], label="y", labels=[0, 1]).labels
    (0, 1)
    >>> FolderSchema(features=["x0"], label="x0", labels=[0])
    Traceback (most recent call last):
    ...
    ValueError: label column 'x0' is also a feature
    """

    features: tuple[str, ...]
    label: str
    labels: tuple[int | str, ...]
    timestamp: str | None = None
    group: str | None = None
    groups: tuple[int | str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(str(f) for f in self.features))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "groups", tuple(self.groups))
        if self.group is not None:
            if self.group in (*self.features, self.label, self.timestamp):
                raise ValueError(
                    f"group column {self.group!r} is also a feature, the label or the timestamp"
                )
            _check_values(self.groups, "groups", f"with group column {self.group!r}, ")
        elif self.groups:
            raise ValueError(f"groups {list(self.groups)} given without a group column")
        if not self.features:
            raise ValueError("features must name at least one column")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features repeat a column: {list(self.features)}")
        if self.label in self.features:
            raise ValueError(f"label column {self.label!r} is also a feature")
        if self.timestamp is not None and self.timestamp in (*self.features, self.label):
            raise ValueError(f"timestamp column {self.timestamp!r} is also a feature or label")
        _check_values(self.labels, "labels")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column a file must have."""
        extra = tuple(c for c in (self.timestamp, self.group) if c is not None)
        return (*self.features, self.label, *extra)


def _check_values(values: tuple[int | str, ...], name: str, context: str = "") -> None:
    """Allowed label (or group) values: at least one, all int or all str, none twice."""
    if not values:
        raise ValueError(f"{context}{name} must list at least one allowed value")
    kinds = {type(v) for v in values}
    if not (kinds <= {int} or kinds <= {str}) or any(isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be all int or all str, got {list(values)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} repeat a value: {list(values)}")


@dataclass(frozen=True)
class CheckedFrame:
    """The usable rows of one table and the count of dropped rows by reason."""

    x: np.ndarray
    y: np.ndarray
    timestamps: np.ndarray | None
    dropped: dict[RowIssue, int]
    groups: np.ndarray | None = None  # each row's group index, with a group column


class FileRejected(ValueError):
    """A table that cannot be used as a whole; ``issue`` says why."""

    def __init__(self, issue: FileIssue, detail: str) -> None:
        super().__init__(f"{issue.value}: {detail}")
        self.issue = issue
        self.detail = detail


def check_frame(
    frame: pd.DataFrame, schema: FolderSchema, max_bad_row_fraction: float = 0.5
) -> CheckedFrame:
    """Validate one table against ``schema``: its good rows as arrays, its bad rows counted.

    Parameters
    ----------
    frame : pandas.DataFrame
        One file's rows.
    schema : FolderSchema
        The columns and labels expected.
    max_bad_row_fraction : float
        Above this fraction of bad rows (or of non-numeric values in a feature column) the
        table is rejected as a whole.

    Returns
    -------
    CheckedFrame
        ``x`` float32 of shape (n, len(features)), ``y`` int64 class indices, ``timestamps``
        int64 nanoseconds since the epoch when the schema has a timestamp column.

    Raises
    ------
    FileRejected
        For a missing column, a non-numeric feature column or too many bad rows.

    Examples
    --------
    >>> schema = FolderSchema(features=["a", "b"], label="y", labels=[0, 1])
    >>> frame = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "b": [1, 2, 3, 4], "y": [0, 1, 7, 1]})
    >>> checked = check_frame(frame, schema)
    >>> checked.x.tolist(), checked.y.tolist(), {k.value: n for k, n in checked.dropped.items()}
    ([[1.0, 1.0], [4.0, 4.0]], [0, 1], {'missing_feature': 1, 'unknown_label': 1})
    """
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise FileRejected(FileIssue.MISSING_COLUMNS, f"missing columns {missing}")
    n = len(frame)
    issue = np.full(n, None, dtype=object)  # the first issue found for each row

    def flag(mask: np.ndarray, reason: RowIssue) -> None:
        issue[mask & (issue == None)] = reason  # noqa: E711 - elementwise on an object array

    features = np.empty((n, len(schema.features)), dtype=np.float64)
    for j, name in enumerate(schema.features):
        column = frame[name]
        absent = column.isna().to_numpy()
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        non_numeric = np.isnan(values) & ~absent
        present = int((~absent).sum())
        if present and non_numeric.sum() > max_bad_row_fraction * present:
            raise FileRejected(
                FileIssue.NON_NUMERIC_COLUMN,
                f"feature {name!r} is not numeric ({int(non_numeric.sum())} of {present} values,"
                f" e.g. {column[non_numeric].iloc[0]!r})",
            )
        flag(absent, RowIssue.MISSING_FEATURE)
        flag(non_numeric, RowIssue.NON_NUMERIC_FEATURE)
        with np.errstate(over="ignore"):
            flag(
                ~np.isfinite(values.astype(np.float32)) & ~np.isnan(values),
                RowIssue.NON_FINITE_FEATURE,
            )
        features[:, j] = values

    label_index = _label_index(frame[schema.label], schema.labels)
    flag(frame[schema.label].isna().to_numpy(), RowIssue.MISSING_LABEL)
    flag(label_index < 0, RowIssue.UNKNOWN_LABEL)

    group_index = None
    if schema.group is not None:
        group_index = _label_index(frame[schema.group], schema.groups)
        flag(frame[schema.group].isna().to_numpy(), RowIssue.MISSING_GROUP)
        flag(group_index < 0, RowIssue.UNKNOWN_GROUP)

    timestamps = None
    if schema.timestamp is not None:
        timestamps = _timestamps_ns(frame[schema.timestamp])
        flag(timestamps == np.iinfo(np.int64).min, RowIssue.BAD_TIMESTAMP)

    bad = issue != None  # noqa: E711
    if n and bad.sum() > max_bad_row_fraction * n:
        counts = Counter(issue[bad])
        detail = ", ".join(f"{k.value}={v}" for k, v in sorted(counts.items()))
        raise FileRejected(
            FileIssue.TOO_MANY_BAD_ROWS, f"{int(bad.sum())} of {n} rows bad ({detail})"
        )
    good = ~bad
    return CheckedFrame(
        x=features[good].astype(np.float32),
        y=label_index[good].astype(np.int64),
        timestamps=None if timestamps is None else timestamps[good],
        dropped=dict(Counter(issue[bad])),
        groups=None if group_index is None else group_index[good].astype(np.int64),
    )


def _label_index(column: pd.Series, labels: tuple[int | str, ...]) -> np.ndarray:
    """Each value's position in ``labels``, or -1 for a missing or unknown value."""
    if isinstance(labels[0], str):
        keys = column.map(lambda v: None if pd.isna(v) else str(v).strip())
    else:
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(numbers) & (np.round(numbers) == numbers)
        keys = pd.Series(np.where(integral, numbers, np.nan)).map(
            lambda v: None if math.isnan(v) else int(v)
        )
    positions = {value: i for i, value in enumerate(labels)}
    return keys.map(lambda v: positions.get(v, -1)).to_numpy(dtype=np.int64)


def _timestamps_ns(column: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch; ``int64`` minimum where a value does not parse."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        parsed = pd.to_datetime(column, unit="s", errors="coerce", utc=True)
    else:
        parsed = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
    return parsed.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT")).view(np.int64)

"""A site's data folder: CSV/Parquet files dropped in by the site become monitoring periods.

The site's own pipeline writes files into a folder; the agent turns the files it has not seen
into the data of the next monitoring period. Each file is checked against a
:class:`~fedretrain.deploy.schema.FolderSchema` (:mod:`fedretrain.deploy.schema`):

- a file that cannot be used as a whole (unreadable, a required column missing, a feature
  column that is not numeric, or more than ``max_bad_row_fraction`` of its rows bad) is
  *quarantined*: recorded in the state file with its reason and never read again until it is
  rewritten (a new size or modification time makes it a new file). It is not moved or deleted:
  the folder may be read-only to the agent, and a sync job that owns the folder would put a
  moved file back;
- a bad row in a good file (a missing or non-numeric or infinite feature, a missing or unknown
  label, an unparseable timestamp) is dropped and counted by its
  :class:`~fedretrain.deploy.schema.RowIssue`.

``.fedretrain-state.json`` in the folder (written atomically) remembers which file went to
which period and which were quarantined, so a restarted agent neither re-reads old files as
new nor loses a period: asking again for a period already taken returns the same files' data.
Hidden files (``.name``), temporary files (``*.tmp``, ``*.part``) and files modified less than
``min_age_s`` ago are left for later, so write a file elsewhere and rename it into the folder.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedretrain.atomic import atomic_replace
from fedretrain.deploy.schema import (
    CheckedFrame,
    FileIssue,
    FileRejected,
    FolderSchema,
    RowIssue,
    check_frame,
)

STATE_FILE = ".fedretrain-state.json"
STATE_VERSION = 1
SUFFIXES = (".csv", ".parquet", ".pq")
_TEMPORARY = (".tmp", ".part", ".partial", ".crdownload")


@dataclass(frozen=True)
class PeriodData:
    """One monitoring period's rows from a site folder.

    ``report`` is flat (str keys; int, str or list-of-str values) so that it fits a Flower
    ``ConfigRecord`` as it is: ``period``, ``files``, ``rows``, ``dropped_rows``,
    ``dropped.<reason>`` for each :class:`RowIssue` seen, ``quarantined_files`` and
    ``quarantined`` (``"name: reason: detail"`` for each file quarantined by this call).
    """

    period: int
    x: np.ndarray
    y: np.ndarray
    files: tuple[str, ...]
    report: dict[str, Any] = field(default_factory=dict)
    groups: np.ndarray | None = None  # each row's group (the schema's group column), if any


class SiteFolder:
    """A folder of CSV/Parquet files read period by period against a schema.

    Parameters
    ----------
    directory : Path
        The site's data folder; the state file is kept in it.
    schema : FolderSchema
        What every file must hold.
    min_age_s : float
        Files modified less than this many seconds ago are left for a later period (a writer
        may not be done).
    max_bad_row_fraction : float
        A file with more bad rows than this fraction is quarantined as a whole.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> rows = "x0,x1,y\\n0.5,1,1\\n0.25,nan,0\\n0.5,0.25,9\\n0.75,2,0\\n"
    >>> _ = (folder / "day1.csv").write_text(rows)
    >>> site = SiteFolder(folder, FolderSchema(["x0", "x1"], "y", [0, 1]), min_age_s=0)
    >>> data = site.take(0)
    >>> data.x.tolist(), data.y.tolist(), data.report["dropped_rows"]
    ([[0.5, 1.0], [0.75, 2.0]], [1, 0], 2)
    >>> site.take(1).files, SiteFolder(folder, site.schema).take(0).files
    ((), ('day1.csv',))
    """

    def __init__(
        self,
        directory: Path,
        schema: FolderSchema,
        *,
        min_age_s: float = 5.0,
        max_bad_row_fraction: float = 0.5,
    ) -> None:
        if not 0.0 <= max_bad_row_fraction <= 1.0:
            raise ValueError(f"max_bad_row_fraction must be in [0, 1], got {max_bad_row_fraction}")
        if min_age_s < 0:
            raise ValueError(f"min_age_s must be >= 0, got {min_age_s}")
        self.directory = Path(directory)
        self.schema = schema
        self.min_age_s = min_age_s
        self.max_bad_row_fraction = max_bad_row_fraction
        self._state = self._load_state()

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def last_period(self) -> int | None:
        """The latest period taken, or ``None`` before the first."""
        periods = [int(p) for p in self._state["periods"]]
        return max(periods) if periods else None

    def pending(self) -> list[Path]:
        """Data files not yet assigned to a period nor quarantined, in arrival order."""
        now = time.time()
        found = []
        for path in self.directory.iterdir():
            name = path.name
            if (
                name.startswith((".", "~"))
                or name.endswith(_TEMPORARY)
                or path.suffix.lower() not in SUFFIXES
                or not path.is_file()
            ):
                continue
            stat = path.stat()
            if now - stat.st_mtime < self.min_age_s:
                continue
            known = self._state["files"].get(name)
            if known is not None and (
                known["status"] == "used" or known["fingerprint"] == _fingerprint(path)
            ):
                continue  # used files stay used; a quarantined one is new again once rewritten
            found.append((stat.st_mtime_ns, name, path))
        return [path for _, _, path in sorted(found)]

    def take(self, period: int) -> PeriodData:
        """The data of monitoring ``period``.

        The first call for a period assigns every pending file to it (possibly none) and
        records that in the state file; a later call for the same period, also after a
        restart, reads the same files again. Periods must be taken in increasing order.

        Parameters
        ----------
        period : int
            The monitoring period, as the server numbers it.

        Returns
        -------
        PeriodData
            ``x`` float32 (n, features), ``y`` int64, ordered by timestamp or arrival.

        Raises
        ------
        ValueError
            If ``period`` is older than the last period taken and was never taken itself.
        """
        key = str(int(period))
        if key in self._state["periods"]:
            paths = [self.directory / name for name in self._state["periods"][key]]
            return self._read_period(int(period), paths, record=False)
        last = self.last_period
        if last is not None and period < last:
            raise ValueError(f"period {period} is older than the last period taken ({last})")
        return self._read_period(int(period), self.pending(), record=True)

    def taken(self, period: int) -> PeriodData | None:
        """The data of a ``period`` already taken, read again from its files (a training
        buffer's earlier window); None if that period was never taken (the site was offline).
        A file that has gone since is left out, and named in the report."""
        names = self._state["periods"].get(str(int(period)))
        if names is None:
            return None
        paths = [self.directory / name for name in names]
        return self._read_period(int(period), paths, record=False)

    def report(self) -> dict[str, Any]:
        """Every file quarantined so far and every row dropped, in the flat report format."""
        files = self._state["files"]
        quarantined = [
            f"{name}: {entry['reason']}"
            for name, entry in sorted(files.items())
            if entry["status"] == "quarantined"
        ]
        dropped: Counter[str] = Counter()
        for entry in files.values():
            dropped.update(entry.get("dropped", {}))
        return {
            "files": sum(entry["status"] == "used" for entry in files.values()),
            "rows": sum(entry.get("rows", 0) for entry in files.values()),
            "dropped_rows": sum(dropped.values()),
            **{f"dropped.{k}": v for k, v in sorted(dropped.items())},
            "quarantined_files": len(quarantined),
            "quarantined": quarantined,
        }

    def _read_period(self, period: int, paths: Sequence[Path], *, record: bool) -> PeriodData:
        parts: list[CheckedFrame] = []
        used: list[str] = []
        quarantined: list[str] = []
        dropped: Counter[RowIssue] = Counter()
        for path in paths:
            fingerprint = _fingerprint(path) if path.exists() else None
            try:
                checked = check_frame(_read_table(path), self.schema, self.max_bad_row_fraction)
            except FileRejected as err:
                if record:
                    self._state["files"][path.name] = {
                        "status": "quarantined",
                        "period": period,
                        "reason": str(err),
                        "fingerprint": fingerprint,
                    }
                quarantined.append(f"{path.name}: {err}")
                continue
            parts.append(checked)
            used.append(path.name)
            dropped.update(checked.dropped)
            if record:
                self._state["files"][path.name] = {
                    "status": "used",
                    "period": period,
                    "rows": len(checked.y),
                    "dropped": {k.value: v for k, v in checked.dropped.items()},
                    "fingerprint": fingerprint,
                }
        if record:
            self._state["periods"][str(period)] = used
            self._save_state()
        x, y, groups = self._concatenate(parts)
        report: dict[str, Any] = {
            "period": period,
            "files": len(used),
            "rows": len(y),
            "dropped_rows": sum(dropped.values()),
            **{f"dropped.{k.value}": v for k, v in sorted(dropped.items())},
            "quarantined_files": len(quarantined),
            "quarantined": quarantined,
        }
        return PeriodData(period=period, x=x, y=y, files=tuple(used), report=report, groups=groups)

    def _concatenate(
        self, parts: list[CheckedFrame]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        width = len(self.schema.features)
        grouped = self.schema.group is not None
        if not parts:
            empty = np.empty(0, np.int64)
            return np.empty((0, width), np.float32), empty, empty.copy() if grouped else None
        x = np.concatenate([p.x for p in parts])
        y = np.concatenate([p.y for p in parts])
        groups = np.concatenate([p.groups for p in parts]) if grouped else None  # type: ignore[misc]
        if self.schema.timestamp is not None:
            order = np.argsort(np.concatenate([p.timestamps for p in parts]), kind="stable")
            x, y = x[order], y[order]
            groups = None if groups is None else groups[order]
        return x, y, groups

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"version": STATE_VERSION, "periods": {}, "files": {}}
        state = json.loads(self.state_path.read_text())
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"{self.state_path} has state version {state.get('version')!r}; "
                f"this fedretrain reads version {STATE_VERSION}"
            )
        return state

    def _save_state(self) -> None:
        text = json.dumps(self._state, indent=1, sort_keys=True)
        atomic_replace(self.state_path, lambda tmp: tmp.write_text(text))


def _read_table(path: Path) -> pd.DataFrame:
    """One data file as a DataFrame; any failure to read it is a :class:`FileRejected`."""
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any reader failure quarantines the file
        raise FileRejected(FileIssue.UNREADABLE, f"{type(err).__name__}: {err}") from err


def _fingerprint(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]

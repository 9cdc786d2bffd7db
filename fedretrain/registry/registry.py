"""The model registry of one run folder: versions with lineage, aliases and decision events.

``<run_dir>/registry.sqlite`` holds the rows and ``<run_dir>/models/v{N}.safetensors`` the
weights. Crash safety rests on one order: the model file is written (atomically, fsynced)
before the row that names it is committed, inside the same write transaction. A crash in
between leaves a file no row names; the next registration takes the same number and replaces
it. Registration is idempotent on the caller's ``key``, and so are decisions given a ``key``: a
resumed run that repeats a step gets the committed result back instead of a duplicate.

>>> import tempfile
>>> import numpy as np
>>> with Registry(tempfile.mkdtemp(), create=True) as registry:
...     first = registry.register(
...         {"w": np.zeros(3, np.float32)},
...         key="p0-initial", trigger="initial", reason="initial training", period=0,
...         status=Status.champion,
...     )
...     second = registry.register(
...         {"w": np.ones(3, np.float32)}, key="p4-retrain", trigger="drift",
...         reason="chi2 fired", period=4, parent=1, samples={3: 100, 5: 80},
...     )
...     again = registry.register(
...         {"w": np.ones(3, np.float32)}, key="p4-retrain", trigger="drift",
...         reason="chi2 fired", period=4, parent=1,
...     )
...     promoted = registry.promote(2, reason="gate passed", period=4)
...     problems = registry.check_invariants()
...     kinds = [e.kind for e in registry.events(version=2)]
...     aliases = registry.aliases()
>>> again.version, second.sites, promoted.status.value, aliases
(2, ('3', '5'), 'champion', {'champion': 2})
>>> problems, kinds
([], ['register', 'alias', 'promote', 'alias', 'alias'])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from fedretrain.registry import codec, model_file
from fedretrain.registry.errors import RegistryError
from fedretrain.registry.invariants import find_problems
from fedretrain.registry.records import (
    Event,
    EventKind,
    ModelVersion,
    Status,
    alias_cluster,
    cluster_alias,
)
from fedretrain.registry.schema import connect
from fedretrain.registry.scores import Site

REGISTRY_FILE = "registry.sqlite"
MODELS_DIR = "models"
ALIASES = ("champion", "candidate")

_COLUMNS = (
    'version, key, parent, "trigger", reason, period, rounds, samples, config_hash, metrics, '
    "site_metrics, epsilon, file, sha256, status, created, cluster, trained"
)
# A cluster's champion may be any version but one that was withdrawn from serving.
_UNSERVABLE = (Status.rejected, Status.rolled_back)


def config_hash(config_text: str) -> str:
    """sha256 of a resolved config (e.g. the run's ``config.yaml``), for lineage.

    >>> config_hash("train:\\n  lr: 0.1\\n")[:12]
    'cb90a3c34064'
    """
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


class Registry:
    """The registry of the run folder ``run_dir``.

    Parameters
    ----------
    run_dir : path
        The run folder; the registry is ``run_dir/registry.sqlite``.
    create : bool
        Start a registry when there is none (and the folder, if needed). When false, a folder
        without a registry is refused with :class:`NotARunFolderError`.

    Raises
    ------
    NotARunFolderError, SchemaVersionError, RegistryError
        See :func:`fedretrain.registry.schema.connect`.
    """

    def __init__(self, run_dir: Path | str, *, create: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.create = create
        self._conn = connect(self.path, create)

    @property
    def path(self) -> Path:
        return self.run_dir / REGISTRY_FILE

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pragmas(self) -> dict[str, Any]:
        """The connection's durability settings and the file's schema stamp, as SQLite reports."""
        return {
            name: self._conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "foreign_keys", "user_version")
        }

    # ------------------------------------------------------------------ versions

    def register(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        key: str,
        trigger: str,
        reason: str,
        period: int,
        parent: int | None = None,
        rounds: int = 0,
        samples: Mapping[Site, int] | None = None,
        config_hash: str = "",
        metrics: Mapping[str, float] | None = None,
        site_metrics: Mapping[Site, Mapping[str, float]] | None = None,
        epsilon: Mapping[Site, float] | None = None,
        status: Status = Status.candidate,
        cluster: int | None = None,
        trained: Sequence[str] | None = None,
    ) -> ModelVersion:
        """Store a new version, or return the one already committed under ``key``.

        A new version becomes the ``candidate`` alias, or with ``status=Status.champion`` is
        promoted in the same transaction (an initial model has nothing to be validated
        against). A key already committed returns that version unchanged, whatever the other
        arguments: a resumed run should then serve :meth:`load` of it, not its own arrays.

        Parameters
        ----------
        arrays : mapping of str to ndarray
            The model's weights.
        key : str
            The caller's idempotency key, unique in the registry (e.g. ``"p3-retrain"``).
        trigger, reason, period, parent, rounds, samples, config_hash, metrics, site_metrics,
        epsilon, cluster, trained
            Lineage; see :class:`ModelVersion`. Non-finite metrics are kept.
        status : Status
            ``candidate`` or ``champion``.
        """
        if not key:
            raise ValueError("key must be a non-empty string")
        existing = self.find(key)
        if existing is not None:
            return existing
        if status not in (Status.candidate, Status.champion):
            raise ValueError(f"status={status!r}: a new version is a candidate or the champion")
        if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
            raise ValueError(f"rounds={rounds!r} must be a whole number >= 0")
        if cluster is not None and (
            isinstance(cluster, bool) or int(cluster) != cluster or cluster < 0
        ):
            raise ValueError(f"cluster={cluster!r} must be a whole number >= 0, or None")
        if trained is not None:
            unknown = sorted(set(trained) - set(arrays))
            if unknown or not trained:
                raise ValueError(
                    f"trained={list(trained)!r}: must name some of the model's arrays "
                    f"(not {unknown}), or be None when every array trained"
                )
        columns = {
            "key": key,
            "parent": parent,
            "trigger": str(trigger),
            "reason": str(reason),
            "period": int(period),
            "rounds": int(rounds),
            "samples": codec.dump({str(s): codec.count(s, n) for s, n in (samples or {}).items()}),
            "config_hash": str(config_hash),
            "metrics": codec.dump(codec.floats(metrics or {})),
            "site_metrics": codec.dump(
                {str(s): codec.floats(m) for s, m in (site_metrics or {}).items()}
            ),
            "epsilon": codec.dump({str(s): float(e) for s, e in (epsilon or {}).items()}),
            "cluster": None if cluster is None else int(cluster),
            "trained": None if trained is None else codec.dump([str(n) for n in trained]),
        }
        with self._transaction():
            raced = self._row("key", key)  # another writer committed it since find()
            if raced is not None:
                return raced
            if parent is not None and self._row("version", parent) is None:
                raise RegistryError(f"parent v{parent} does not exist in {self.path}")
            version = self._conn.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM versions"
            ).fetchone()[0]
            data = model_file.encode(
                arrays, {"fedretrain.version": str(version), "fedretrain.key": key}
            )
            relative = f"{MODELS_DIR}/v{version}.safetensors"
            # The file first: a crash before COMMIT leaves a file that no row names, which the
            # next registration of this number replaces.
            model_file.write(self.run_dir / relative, data)
            self._conn.execute(
                f"INSERT INTO versions ({_COLUMNS}) VALUES "
                "(:version, :key, :parent, :trigger, :reason, :period, :rounds, :samples, "
                ":config_hash, :metrics, :site_metrics, :epsilon, :file, :sha256, :status, "
                ":created, :cluster, :trained)",
                {
                    **columns,
                    "version": version,
                    "file": relative,
                    "sha256": model_file.sha256(data),
                    "status": Status.candidate.value,
                    "created": codec.now(),
                },
            )
            self._event(
                EventKind.register,
                period,
                version,
                {"key": key, "parent": parent, "trigger": trigger, "reason": reason},
            )
            if status is Status.champion:
                self._promote(version, reason, period, manual=False)
            else:
                self._set_alias("candidate", version, reason, period)
        return self.get(version)

    def get(self, version: int) -> ModelVersion:
        """The version numbered ``version``; a :class:`RegistryError` if there is none."""
        found = self._row("version", version)
        if found is None:
            count = self._conn.execute("SELECT count(*) FROM versions").fetchone()[0]
            held = f"it holds v1..v{count}" if count else "it holds no version"
            raise RegistryError(f"no version {version} in {self.path} ({held})")
        return found

    def find(self, key: str) -> ModelVersion | None:
        """The version registered under ``key``, if any."""
        return self._row("key", key)

    def versions(self) -> list[ModelVersion]:
        """Every version, oldest first."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM versions ORDER BY version")
        return [codec.version_from_row(row) for row in rows]

    def champion(self) -> ModelVersion | None:
        version = self.aliases().get("champion")
        return None if version is None else self.get(version)

    def candidate(self) -> ModelVersion | None:
        version = self.aliases().get("candidate")
        return None if version is None else self.get(version)

    def aliases(self) -> dict[str, int]:
        """Alias name to version, for the aliases that are set."""
        rows = self._conn.execute("SELECT name, version FROM aliases ORDER BY name")
        return {name: version for name, version in rows}

    def cluster_champions(self) -> dict[int, int]:
        """``adaptation=clustered``: each cluster's champion (its ``cluster-N`` alias)."""
        out = {}
        for name, version in self.aliases().items():
            cluster = alias_cluster(name)
            if cluster is not None:
                out[cluster] = version
        return dict(sorted(out.items()))

    def versions_of(self, cluster: int) -> list[ModelVersion]:
        """The versions trained for ``cluster``, oldest first: the cluster's lineage."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM versions WHERE cluster = ? ORDER BY version", (cluster,)
        )
        return [codec.version_from_row(row) for row in rows]

    def set_cluster_champion(
        self,
        cluster: int,
        version: int | None,
        *,
        reason: str,
        period: int | None = None,
        key: str | None = None,
        replaced: Status = Status.retired,
    ) -> None:
        """Point cluster ``cluster``'s champion alias at ``version`` (None clears it).

        The version must have been trained for that cluster and not withdrawn (rejected or
        rolled back); its model file is verified first. The version it replaces ends
        ``replaced``: ``retired`` (superseded; only a candidate changes, the registry's
        champion stays one until a promotion) or ``rolled_back`` (withdrawn; the registry's
        champion is withdrawn with :meth:`rollback` instead). Recorded as an ``alias`` event;
        ``key`` makes the call idempotent.
        """
        if replaced not in (Status.retired, Status.rolled_back):
            raise ValueError(f"replaced={replaced!r}: a replaced version is retired or rolled_back")
        name = cluster_alias(cluster)
        with self._transaction():
            if key is not None and self._keyed_event(key) is not None:
                return
            if version is not None:
                target = self.get(version)
                if target.cluster != cluster:
                    trained = (
                        "no cluster" if target.cluster is None else f"cluster {target.cluster}"
                    )
                    raise RegistryError(
                        f"v{version} was trained for {trained}, not cluster {cluster}: a "
                        "cluster's champion is one of its own versions"
                    )
                if target.status in _UNSERVABLE:
                    raise RegistryError(
                        f"v{version} is {target.status.value}: a withdrawn version is no "
                        f"cluster's champion"
                    )
                self._verify(target)
            previous = self.aliases().get(name)
            if previous is not None and previous != version:
                self._end_cluster_champion(self.get(previous), replaced, reason, period)
            self._set_alias(name, version, reason, period, key)

    # ------------------------------------------------------------------ decisions

    def set_alias(
        self, name: str, version: int | None, *, reason: str, period: int | None = None
    ) -> None:
        """Point the ``candidate`` alias at ``version`` (None clears it); recorded as an event.

        The ``champion`` alias moves only with :meth:`promote` and :meth:`rollback`, which
        keep it and the versions' status in step.
        """
        if name != "candidate":
            raise ValueError(
                f"alias {name!r}: only 'candidate' is set directly; the champion moves with "
                "promote() and rollback()"
            )
        with self._transaction():
            if version is not None:
                self.get(version)
            self._set_alias(name, version, reason, period)

    def promote(
        self,
        version: int,
        *,
        reason: str,
        period: int | None = None,
        manual: bool = False,
        key: str | None = None,
    ) -> ModelVersion:
        """Make ``version`` the champion; the previous champion is retired.

        Promoting the champion changes nothing. The model file is verified first: a version
        whose file is missing or corrupt is never made the champion. ``manual`` marks an
        operator's decision in the event; ``key`` makes the call idempotent.
        """
        with self._transaction():
            if key is None or self._keyed_event(key) is None:
                self._promote(version, reason, period, manual, key)
        return self.get(version)

    def reject(
        self,
        version: int,
        *,
        reason: str,
        period: int | None = None,
        status: Status = Status.rejected,
        key: str | None = None,
    ) -> ModelVersion:
        """End a candidate: ``rejected`` (failed the gate) or ``rolled_back`` (ended a canary)."""
        if status not in (Status.rejected, Status.rolled_back):
            raise ValueError(f"status={status!r}: a candidate ends rejected or rolled_back")
        with self._transaction():
            if key is not None and self._keyed_event(key) is not None:
                return self.get(version)
            target = self.get(version)
            if target.status is not Status.candidate:
                raise RegistryError(
                    f"v{version} is {target.status.value}, not a candidate: only a candidate "
                    "can be rejected"
                )
            self._refuse_cluster_champion(version, "rejected")
            self._set_status(version, status)
            payload = {"status": status.value, "reason": reason}
            self._event(EventKind.reject, period, version, payload, key)
            if self.aliases().get("candidate") == version:
                self._set_alias("candidate", None, reason, period)
        return self.get(version)

    def rollback(
        self,
        *,
        to: int | None = None,
        reason: str,
        period: int | None = None,
        manual: bool = False,
        key: str | None = None,
    ) -> ModelVersion:
        """Put the champion back to its parent (or to version ``to``); returns the new champion.

        The withdrawn champion becomes ``rolled_back``. The target's model file is verified
        first. ``key`` makes the call idempotent (a repeated rollback would go back further).
        """
        with self._transaction():
            if key is not None and self._keyed_event(key) is not None:
                return self._require_champion()
            current = self._require_champion()
            target = current.parent if to is None else to
            if target is None:
                raise RegistryError(
                    f"v{current.version} has no parent to roll back to: name the version"
                )
            if target == current.version:
                raise RegistryError(f"v{target} is already the champion")
            chosen = self.get(target)
            self._verify(chosen)
            self._follow_rollback(current, chosen, reason, period)
            self._set_status(current.version, Status.rolled_back)
            self._set_status(target, Status.champion)
            payload = {"from": current.version, "to": target, "reason": reason, "manual": manual}
            self._event(EventKind.rollback, period, target, payload, key)
            self._set_alias("champion", target, reason, period)
            if self.aliases().get("candidate") == target:
                self._set_alias("candidate", None, reason, period)
        return self.get(target)

    def record(
        self,
        kind: str,
        *,
        period: int | None = None,
        version: int | None = None,
        payload: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> Event:
        """Append a decision (a trigger, a gate or a canary verdict...) to the events.

        ``payload`` is stored as JSON: numpy scalars become numbers, NaN and infinities
        ``null``, anything else unknown its text. With a ``key`` already recorded, the
        recorded event is returned and nothing is added.
        """
        kind = kind.value if isinstance(kind, Enum) else str(kind)
        if not kind:
            raise ValueError("kind must be a non-empty string")
        with self._transaction():
            if key is not None:
                found = self._keyed_event(key)
                if found is not None:
                    return found
            if version is not None:
                self.get(version)
            event_id = self._event(kind, period, version, dict(payload or {}), key)
        return self.events(since=event_id - 1)[0]

    def events(
        self,
        *,
        kind: str | None = None,
        period: int | None = None,
        version: int | None = None,
        since: int = 0,
    ) -> list[Event]:
        """Recorded events, oldest first, filtered by kind, period and version.

        ``since`` keeps only events whose id is greater (for following a running registry).
        """
        where: list[str] = ["id > ?"]
        args: list[object] = [since]
        if kind is not None:
            where.append("kind = ?")
            args.append(kind.value if isinstance(kind, Enum) else kind)
        if period is not None:
            where.append("period = ?")
            args.append(period)
        if version is not None:
            where.append("version = ?")
            args.append(version)
        rows = self._conn.execute(
            "SELECT id, kind, period, version, payload, key, created FROM events "
            f"WHERE {' AND '.join(where)} ORDER BY id",
            args,
        )
        return [codec.event_from_row(row) for row in rows]

    # ------------------------------------------------------------------ model files

    def model_path(self, version: int) -> Path:
        return self.run_dir / self.get(version).file

    def model_bytes(self, version: int) -> bytes:
        """The model file's bytes, verified against the recorded sha256."""
        return self._verify(self.get(version))

    def load(self, version: int) -> dict[str, np.ndarray]:
        """The model's arrays, verified against the recorded sha256.

        Raises
        ------
        ModelFileError
            The file is missing or its sha256 differs; the message names the file and the
            expected hash. Nothing is rewritten.
        """
        return model_file.decode(self.model_bytes(version))

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> list[str]:
        """Every broken invariant, in words; an empty list when the registry is consistent.

        Checked: version numbers run 1..N; exactly one champion once any version exists, and
        the ``champion`` alias names it; the ``candidate`` alias names a candidate; aliases
        and parents name existing versions; every model file is present with its sha256.
        """
        return find_problems(self.versions(), self.aliases(), self._verify)

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock before anything is read."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _row(self, column: str, value: object) -> ModelVersion | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM versions WHERE {column} = ?", (value,)
        ).fetchone()
        return None if row is None else codec.version_from_row(row)

    def _refuse_cluster_champion(self, version: int, verb: str) -> None:
        named = [
            n for n, v in self.aliases().items() if v == version and alias_cluster(n) is not None
        ]
        if named:
            raise RegistryError(
                f"v{version} is {named[0]}'s champion and cannot be {verb}: point {named[0]} "
                "at another of its versions first (set_cluster_champion)"
            )

    def _end_cluster_champion(
        self, old: ModelVersion, status: Status, reason: str, period: int | None
    ) -> None:
        """A cluster's former champion ``old`` ends ``status`` (see set_cluster_champion)."""
        if status is Status.rolled_back and old.status is Status.champion:
            raise RegistryError(
                f"v{old.version} is the registry's champion: withdraw it with rollback(), "
                "which moves its cluster's alias too"
            )
        if old.status is Status.candidate or (
            status is Status.rolled_back and old.status is Status.retired
        ):
            self._set_status(old.version, status)
            payload = {"status": status.value, "reason": reason, "cluster": old.cluster}
            kind = EventKind.reject if status is Status.rolled_back else EventKind.retire
            self._event(kind, period, old.version, payload)
            if self.aliases().get("candidate") == old.version:
                self._set_alias("candidate", None, reason, period)

    def _follow_rollback(
        self, current: ModelVersion, target: ModelVersion, reason: str, period: int | None
    ) -> None:
        """A rolled-back champion that is also its cluster's champion hands that alias to the
        rollback's target when the target is of the same cluster; otherwise it is refused."""
        for name, version in self.aliases().items():
            cluster = alias_cluster(name)
            if cluster is None or version != current.version:
                continue
            if target.cluster != cluster:
                raise RegistryError(
                    f"v{current.version} is {name}'s champion and v{target.version} is not of "
                    f"cluster {cluster}: roll back to one of cluster {cluster}'s versions "
                    f"(fedretrain models list RUN --cluster {cluster})"
                )
            self._set_alias(name, target.version, reason, period)

    def _require_champion(self) -> ModelVersion:
        champion = self.champion()
        if champion is None:
            raise RegistryError(f"{self.path} has no champion")
        return champion

    def _verify(self, version: ModelVersion) -> bytes:
        return model_file.read_verified(
            self.run_dir / version.file, version.sha256, version.version
        )

    def _promote(
        self,
        version: int,
        reason: str,
        period: int | None,
        manual: bool,
        key: str | None = None,
    ) -> None:
        target = self.get(version)
        previous = self.aliases().get("champion")
        if previous == version:
            return
        self._verify(target)
        if previous is not None:
            self._set_status(previous, Status.retired)
        self._set_status(version, Status.champion)
        payload = {
            "from": previous,
            "to": version,
            "reason": reason,
            "manual": manual,
            "previous_status": target.status.value,
        }
        self._event(EventKind.promote, period, version, payload, key)
        self._set_alias("champion", version, reason, period)
        if self.aliases().get("candidate") == version:
            self._set_alias("candidate", None, reason, period)

    def _set_status(self, version: int, status: Status) -> None:
        self._conn.execute(
            "UPDATE versions SET status = ? WHERE version = ?", (status.value, version)
        )

    def _set_alias(
        self,
        name: str,
        version: int | None,
        reason: str,
        period: int | None,
        key: str | None = None,
    ) -> None:
        previous = self.aliases().get(name)
        if previous == version:
            return
        if version is None:
            self._conn.execute("DELETE FROM aliases WHERE name = ?", (name,))
        else:
            self._conn.execute(
                "INSERT INTO aliases (name, version) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                (name, version),
            )
        payload = {"alias": name, "version": version, "previous": previous, "reason": reason}
        target = version if version is not None else previous
        self._event(EventKind.alias, period, target, payload, key)

    def _event(
        self,
        kind: str | EventKind,
        period: int | None,
        version: int | None,
        payload: Mapping[str, Any],
        key: str | None = None,
    ) -> int:
        cursor = self._conn.execute(
            "INSERT INTO events (key, kind, period, version, payload, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                kind.value if isinstance(kind, Enum) else kind,
                None if period is None else int(period),
                version,
                json.dumps(codec.plain(payload), allow_nan=False),
                codec.now(),
            ),
        )
        return int(cursor.lastrowid or 0)

    def _keyed_event(self, key: str) -> Event | None:
        row = self._conn.execute(
            "SELECT id, kind, period, version, payload, key, created FROM events WHERE key = ?",
            (key,),
        ).fetchone()
        return None if row is None else codec.event_from_row(row)

"""The registry's SQLite file: its tables, its schema version and how it is opened.

The schema version is ``PRAGMA user_version`` and the file is marked as ours by
``PRAGMA application_id``; both live in the database header, so a file is identified without
reading a table. Opening never writes to a file it refuses: a newer schema or a foreign
database is reported before any setting is changed.

Durability: the journal is a write-ahead log with ``synchronous=FULL``, so a committed
transaction survives a power loss, and readers (the CLI) do not block the running server.
Lineage is immutable and events are append-only, enforced by triggers in the file itself.

Schema history: 1, the first release; 2 adds each version's ``cluster`` (``adaptation=
clustered``: the concept cluster it was trained for) and the per-cluster champion aliases
``cluster-N``; 3 adds each version's ``trained``, the arrays its training rounds trained when
the run froze others (``train.freeze``; NULL: every array). An older file is migrated when it
is opened, one schema at a time, in one transaction that also records a ``migrate`` event per
step; a file that fails to migrate is left as it was.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fedretrain import __version__
from fedretrain.registry import codec
from fedretrain.registry.errors import NotARunFolderError, RegistryError, SchemaVersionError

SCHEMA_VERSION = 3  # bump on any change to the tables below, with a migration from the last
APPLICATION_ID = 0x46524547  # "FREG": marks a SQLite file as a fedretrain registry
STATUSES = ("candidate", "champion", "retired", "rejected", "rolled_back")
# A cluster's champion alias is "cluster-" and the cluster's number (cluster-0, cluster-12).
_ALIAS_NAME_CHECK = (
    "name IN ('champion', 'candidate') OR (name GLOB 'cluster-[0-9]*' AND "
    "name NOT GLOB 'cluster-*[^0-9]*')"
)
_CLUSTER_COLUMN = "cluster INTEGER CHECK (cluster IS NULL OR cluster >= 0)"
_TRAINED_COLUMN = "trained TEXT"  # a JSON list of array names; NULL: every array trained
_ALIASES_TABLE = f"""
CREATE TABLE aliases (
    name TEXT PRIMARY KEY CHECK ({_ALIAS_NAME_CHECK}),
    version INTEGER NOT NULL REFERENCES versions(version)
) STRICT;
"""
_LINEAGE_TRIGGER = """
CREATE TRIGGER versions_lineage_is_immutable
BEFORE UPDATE OF version, key, parent, "trigger", reason, period, rounds, samples, config_hash,
    metrics, site_metrics, epsilon, file, sha256, created, cluster, trained ON versions
BEGIN SELECT RAISE(ABORT, 'a version''s lineage is immutable'); END;
"""

_SCHEMA = f"""
CREATE TABLE versions (
    version INTEGER PRIMARY KEY CHECK (version >= 1),
    key TEXT NOT NULL UNIQUE,
    parent INTEGER REFERENCES versions(version) CHECK (parent IS NULL OR parent < version),
    "trigger" TEXT NOT NULL,
    reason TEXT NOT NULL,
    period INTEGER NOT NULL,
    rounds INTEGER NOT NULL CHECK (rounds >= 0),
    samples TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    metrics TEXT NOT NULL,
    site_metrics TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)})),
    created TEXT NOT NULL,
    {_CLUSTER_COLUMN},
    {_TRAINED_COLUMN}
) STRICT;
{_ALIASES_TABLE}
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE,
    kind TEXT NOT NULL,
    period INTEGER,
    version INTEGER REFERENCES versions(version),
    payload TEXT NOT NULL,
    created TEXT NOT NULL
) STRICT;

CREATE INDEX events_by_kind ON events(kind);
CREATE INDEX events_by_version ON events(version);

{_LINEAGE_TRIGGER}
CREATE TRIGGER versions_are_kept BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'versions are never deleted'); END;

CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"""


def connect(path: Path, create: bool) -> sqlite3.Connection:
    """Open the registry file at ``path``, creating it only when ``create`` is true.

    Raises
    ------
    NotARunFolderError
        No registry at ``path`` and ``create`` is false, or the file is not a registry.
    SchemaVersionError
        The file's schema is newer than this fedretrain reads.
    RegistryError
        The file is not a SQLite database at all.
    """
    if not path.is_file():
        if not create and not path.parent.is_dir():
            raise NotARunFolderError(
                f"{path.parent} is not a fedretrain run folder: no such folder"
            )
        if not create:
            raise NotARunFolderError(
                f"{path.parent} is not a fedretrain run folder: it has no {path.name}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in the registry).
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.row_factory = sqlite3.Row
    try:
        _check_header(conn, path, create)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RegistryError(f"{path}: could not switch to write-ahead logging (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _initialise(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_header(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise RegistryError(f"{path} is not a readable SQLite database ({err})") from None
    if app_id == 0 and version == 0 and tables == 0:
        if not create:
            raise NotARunFolderError(f"{path} is an empty database, not a fedretrain registry")
        return
    if app_id != APPLICATION_ID:
        raise NotARunFolderError(f"{path} is a SQLite database but not a fedretrain registry")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has registry schema version {version}, but fedretrain {__version__} reads "
            f"schema version {SCHEMA_VERSION} at most: upgrade fedretrain to open it"
        )
    if version < 1:
        raise SchemaVersionError(
            f"{path} has registry schema version {version}, which fedretrain {__version__} "
            f"cannot migrate to {SCHEMA_VERSION}"
        )


def _initialise(conn: sqlite3.Connection) -> None:
    """Create the tables and stamp the header, or migrate an older file, in one transaction
    (a no-op when the file is current)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found == 0:
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        for version in range(found or SCHEMA_VERSION, SCHEMA_VERSION):
            _MIGRATIONS[version](conn)
            conn.execute(
                "INSERT INTO events (kind, payload, created) VALUES ('migrate', ?, ?)",
                (json.dumps({"from": version, "to": version + 1}), codec.now()),
            )
        if found != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 to 2: each version's cluster (NULL: no cluster), and aliases that may name a
    cluster's champion (the table is rebuilt: SQLite cannot alter a CHECK)."""
    conn.execute(f"ALTER TABLE versions ADD COLUMN {_CLUSTER_COLUMN}")
    conn.execute("ALTER TABLE aliases RENAME TO aliases_1")
    conn.execute(_ALIASES_TABLE.strip())
    conn.execute("INSERT INTO aliases (name, version) SELECT name, version FROM aliases_1")
    conn.execute("DROP TABLE aliases_1")
    conn.execute("DROP TRIGGER versions_lineage_is_immutable")
    conn.execute(_LINEAGE_TRIGGER_2)


def _to_3(conn: sqlite3.Connection) -> None:
    """Schema 2 to 3: the arrays each version trained (NULL for every earlier version: they
    all trained every array), part of the immutable lineage."""
    conn.execute(f"ALTER TABLE versions ADD COLUMN {_TRAINED_COLUMN}")
    conn.execute("DROP TRIGGER versions_lineage_is_immutable")
    conn.execute(_LINEAGE_TRIGGER.strip())


# Schema 2's lineage trigger: a migration creates the trigger of its own schema, so that the
# next migration finds what it expects.
_LINEAGE_TRIGGER_2 = _LINEAGE_TRIGGER.strip().replace(", cluster, trained ON", ", cluster ON")
_MIGRATIONS = {1: _to_2, 2: _to_3}  # from schema N to N + 1


def _statements(script: str) -> list[str]:
    """Split ``script`` into statements (executescript would commit the open transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return [s for s in statements if s]

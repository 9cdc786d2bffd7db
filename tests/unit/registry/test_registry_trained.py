"""Registry schema 3: the arrays each version trained (``train.freeze``), and the migration of a
schema-2 file (``data/registry_v2``, written by fedretrain before schema 3 existed)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedretrain.registry import SCHEMA_VERSION, Registry, schema

V2 = Path(__file__).parent / "data" / "registry_v2"


def weights() -> dict[str, np.ndarray]:
    return {
        "features.weight": np.ones((4, 3), np.float32),
        "head.weight": np.zeros((2, 4), np.float32),
        "head.bias": np.zeros(2, np.float32),
    }


def raw_rows(path: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(row) for row in conn.execute(query)]
    finally:
        conn.close()


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old"
    shutil.copytree(V2, run)
    return run


def test_the_bundled_file_is_a_schema_2_registry() -> None:
    assert raw_rows(V2 / "registry.sqlite", "PRAGMA user_version") == [(2,)]
    columns = [r[1] for r in raw_rows(V2 / "registry.sqlite", "PRAGMA table_info(versions)")]
    assert "cluster" in columns and "trained" not in columns


def test_a_schema_2_file_is_migrated_on_open_and_keeps_every_row(old_run: Path) -> None:
    path = old_run / "registry.sqlite"
    before = raw_rows(path, "SELECT * FROM versions ORDER BY version")
    aliases = raw_rows(path, "SELECT name, version FROM aliases ORDER BY name")
    with Registry(old_run) as registry:
        assert registry.pragmas["user_version"] == SCHEMA_VERSION == 3
        assert [(v.cluster, v.trained) for v in registry.versions()] == [(0, None), (1, None)]
        assert [e.payload for e in registry.events(kind="migrate")] == [{"from": 2, "to": 3}]
        assert registry.check_invariants() == []
        assert registry.cluster_champions() == {0: 1, 1: 2}
    after = raw_rows(path, "SELECT * FROM versions ORDER BY version")
    assert [row[:-1] for row in after] == before  # the new column, NULL, at the end
    assert [row[-1] for row in after] == [None, None]
    assert raw_rows(path, "SELECT name, version FROM aliases ORDER BY name") == aliases


def test_trained_is_part_of_the_immutable_lineage_after_a_migration(old_run: Path) -> None:
    with Registry(old_run):
        pass
    conn = sqlite3.connect(old_run / "registry.sqlite")
    try:
        for column, value in (("trained", "'[]'"), ("cluster", "5")):
            with pytest.raises(sqlite3.IntegrityError, match="immutable"):
                conn.execute(f"UPDATE versions SET {column} = {value} WHERE version = 1")
    finally:
        conn.close()


def test_a_failed_migration_to_3_leaves_the_schema_2_file_as_it_was(
    old_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_run / "registry.sqlite"
    versions = raw_rows(path, "SELECT * FROM versions ORDER BY version")

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE versions ADD COLUMN trained TEXT")
        raise sqlite3.OperationalError("disk full (simulated)")

    monkeypatch.setitem(schema._MIGRATIONS, 2, half_done)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        Registry(old_run)
    assert raw_rows(path, "PRAGMA user_version") == [(2,)]
    assert raw_rows(path, "SELECT * FROM versions ORDER BY version") == versions


def test_a_version_records_the_arrays_it_trained(tmp_path: Path) -> None:
    with Registry(tmp_path / "run", create=True) as registry:
        full = registry.register(weights(), key="p0", trigger="initial", reason="r", period=0)
        head = registry.register(
            weights(),
            key="p1",
            trigger="drift",
            reason="r",
            period=1,
            trained=("head.weight", "head.bias"),
        )
    with Registry(tmp_path / "run") as registry:  # as read back from the file
        assert registry.get(full.version).trained is None
        assert registry.get(head.version).trained == ("head.weight", "head.bias")
        # The file holds the whole model: frozen arrays included, so it can be served.
        assert sorted(registry.load(head.version)) == sorted(weights())


@pytest.mark.parametrize("trained", [(), ("head.weight", "nope")])
def test_trained_must_name_arrays_of_the_model(tmp_path: Path, trained: tuple[str, ...]) -> None:
    with Registry(tmp_path / "run", create=True) as registry:
        with pytest.raises(ValueError, match="must name some of the model's arrays"):
            registry.register(
                weights(), key="p0", trigger="t", reason="r", period=0, trained=trained
            )
        assert registry.versions() == []

"""Registry schema 2: each version's cluster, per-cluster champion aliases, and the migration of
a schema-1 file (``data/registry_v1``, written by fedretrain before schema 2 existed)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedretrain.registry import (
    SCHEMA_VERSION,
    Registry,
    RegistryError,
    Status,
    alias_cluster,
    cluster_alias,
    schema,
)

V1 = Path(__file__).parent / "data" / "registry_v1"


def weights(fill: float) -> dict[str, np.ndarray]:
    return {"layer.weight": np.full((2, 3), fill, np.float32)}


def raw_rows(path: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(row) for row in conn.execute(query)]
    finally:
        conn.close()


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old"
    shutil.copytree(V1, run)
    return run


# ---------------------------------------------------------------------- migration


def test_the_bundled_file_is_a_schema_1_registry() -> None:
    assert raw_rows(V1 / "registry.sqlite", "PRAGMA user_version") == [(1,)]
    columns = [r[1] for r in raw_rows(V1 / "registry.sqlite", "PRAGMA table_info(versions)")]
    assert "cluster" not in columns


def test_a_schema_1_file_is_migrated_on_open_and_keeps_every_row(old_run: Path) -> None:
    path = old_run / "registry.sqlite"
    lineage = "version, key, parent, status, sha256, file, metrics, samples, created"
    before = raw_rows(path, f"SELECT {lineage} FROM versions ORDER BY version")
    aliases = raw_rows(path, "SELECT name, version FROM aliases ORDER BY name")
    events = raw_rows(path, "SELECT id, kind, payload FROM events ORDER BY id")
    with Registry(old_run) as registry:
        assert registry.pragmas["user_version"] == SCHEMA_VERSION == 3
        assert [v.cluster for v in registry.versions()] == [None] * 4
        assert registry.check_invariants() == []
        migrated = registry.events(kind="migrate")  # through schema 2 to 3, a step each
        assert [e.payload for e in migrated] == [{"from": 1, "to": 2}, {"from": 2, "to": 3}]
        assert registry.cluster_champions() == {}
    assert raw_rows(path, f"SELECT {lineage} FROM versions ORDER BY version") == before
    assert raw_rows(path, "SELECT name, version FROM aliases ORDER BY name") == aliases
    assert raw_rows(path, "SELECT id, kind, payload FROM events ORDER BY id")[:-2] == events
    with Registry(old_run) as registry:  # a second open migrates nothing
        assert len(registry.events(kind="migrate")) == 2


def test_a_migrated_file_has_schema_2s_constraints(old_run: Path) -> None:
    with Registry(old_run):
        pass
    conn = sqlite3.connect(old_run / "registry.sqlite")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("UPDATE versions SET cluster = 1 WHERE version = 1")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("INSERT INTO aliases VALUES ('cluster-x', 1)")
        conn.execute("INSERT INTO aliases VALUES ('cluster-7', 1)")  # the rebuilt CHECK
        conn.rollback()
    finally:
        conn.close()


def test_a_migration_that_fails_leaves_the_file_as_it_was(
    old_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_run / "registry.sqlite"
    versions = raw_rows(path, "SELECT * FROM versions ORDER BY version")

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE versions ADD COLUMN cluster INTEGER")
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setitem(schema._MIGRATIONS, 1, half_done)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        Registry(old_run)
    assert raw_rows(path, "PRAGMA user_version") == [(1,)]
    columns = [r[1] for r in raw_rows(path, "PRAGMA table_info(versions)")]
    assert "cluster" not in columns
    assert raw_rows(path, "SELECT count(*) FROM events WHERE kind = 'migrate'") == [(0,)]
    assert raw_rows(path, "SELECT * FROM versions ORDER BY version") == versions
    monkeypatch.undo()
    with Registry(old_run) as registry:  # the real migration still runs on the next open
        assert registry.pragmas["user_version"] == SCHEMA_VERSION


# ---------------------------------------------------------------------- cluster lineages


@pytest.fixture
def clustered(tmp_path: Path) -> Iterator[Registry]:
    """v1 cluster 0 (champion), v2 cluster 1 from v1, v3 cluster 1 from v2 (a refine)."""
    with Registry(tmp_path / "run", create=True) as reg:
        reg.register(
            weights(0), key="p0", trigger="initial", reason="r", period=0,
            status=Status.champion, cluster=0,
        )  # fmt: skip
        reg.register(weights(1), key="p2", trigger="t", reason="r", period=2, parent=1, cluster=1)
        reg.register(weights(2), key="p4", trigger="t", reason="r", period=4, parent=2, cluster=1)
        reg.set_cluster_champion(0, 1, reason="founded", period=0)
        reg.set_cluster_champion(1, 2, reason="founded", period=2)
        yield reg


def test_versions_carry_their_cluster_and_each_cluster_has_a_champion(
    clustered: Registry,
) -> None:
    assert [v.cluster for v in clustered.versions()] == [0, 1, 1]
    assert [v.version for v in clustered.versions_of(1)] == [2, 3]
    assert clustered.get(3).to_dict()["cluster"] == 1
    clustered.set_cluster_champion(1, 3, reason="refined", period=4, key="p4-c1")
    clustered.set_cluster_champion(1, 2, reason="again", period=4, key="p4-c1")  # keyed: no-op
    assert clustered.cluster_champions() == {0: 1, 1: 3}
    assert clustered.aliases() == {
        "candidate": 3,
        "champion": 1,
        "cluster-0": 1,
        "cluster-1": 3,
    }
    moved = [e.payload for e in clustered.events(kind="alias") if e.payload["alias"] == "cluster-1"]
    assert [(p["previous"], p["version"]) for p in moved] == [(None, 2), (2, 3)]
    assert clustered.check_invariants() == []


def test_a_cluster_champion_must_be_an_unwithdrawn_version_of_that_cluster(
    clustered: Registry,
) -> None:
    with pytest.raises(RegistryError, match="trained for cluster 0, not cluster 1"):
        clustered.set_cluster_champion(1, 1, reason="no")
    clustered.register(weights(3), key="p5", trigger="t", reason="r", period=5, parent=3)
    with pytest.raises(RegistryError, match="trained for no cluster"):
        clustered.set_cluster_champion(1, 4, reason="no")
    clustered.reject(3, reason="gate")
    with pytest.raises(RegistryError, match="v3 is rejected"):
        clustered.set_cluster_champion(1, 3, reason="no")
    assert clustered.cluster_champions() == {0: 1, 1: 2}


def test_a_cluster_champion_is_not_rejected_until_its_alias_moves(clustered: Registry) -> None:
    with pytest.raises(RegistryError, match="cluster-1's champion and cannot be rejected"):
        clustered.reject(2, reason="no")
    assert clustered.get(2).status is Status.candidate
    clustered.reject(3, reason="gate")  # not a cluster's champion
    assert clustered.check_invariants() == []


def test_a_superseded_cluster_champion_retires_and_a_withdrawn_one_rolls_back(
    clustered: Registry,
) -> None:
    clustered.set_cluster_champion(1, 3, reason="refined", period=4)
    assert (clustered.get(2).status, clustered.get(3).status) == (
        Status.retired,
        Status.candidate,
    )
    [retired] = clustered.events(kind="retire")
    assert (retired.version, retired.payload["cluster"]) == (2, 1)
    clustered.set_cluster_champion(1, 2, reason="worse", period=5, replaced=Status.rolled_back)
    assert (clustered.get(2).status, clustered.get(3).status) == (
        Status.retired,
        Status.rolled_back,
    )
    assert clustered.aliases().get("candidate") is None  # v3 no longer awaits anything
    assert clustered.check_invariants() == []
    with pytest.raises(RegistryError, match="registry's champion: withdraw it with rollback"):
        clustered.set_cluster_champion(0, None, reason="x", replaced=Status.rolled_back)
    assert clustered.cluster_champions() == {0: 1, 1: 2}


def test_rolling_back_a_champion_carries_its_cluster_alias_within_the_cluster(
    clustered: Registry,
) -> None:
    clustered.set_cluster_champion(1, 3, reason="refined")
    clustered.promote(3, reason="largest")
    clustered.rollback(reason="worse")  # to v3's parent v2, of cluster 1
    assert clustered.champion().version == 2  # type: ignore[union-attr]
    assert clustered.cluster_champions() == {0: 1, 1: 2}
    assert clustered.get(3).status is Status.rolled_back
    assert clustered.check_invariants() == []
    with pytest.raises(RegistryError, match="not of cluster 1: roll back to one of"):
        clustered.rollback(to=1, reason="across clusters")
    assert clustered.champion().version == 2  # type: ignore[union-attr]


def test_forged_cluster_aliases_are_reported(clustered: Registry) -> None:
    clustered.set_cluster_champion(1, 3, reason="refined")
    clustered.set_cluster_champion(1, 2, reason="worse", replaced=Status.rolled_back)
    conn = sqlite3.connect(clustered.path)
    try:
        conn.execute("INSERT INTO aliases VALUES ('cluster-4', 2)")
        conn.execute("INSERT INTO aliases VALUES ('cluster-5', 3)")
        conn.commit()
    finally:
        conn.close()
    assert clustered.check_invariants() == [
        "alias cluster-4 points to v2, which was trained for cluster 1",
        "alias cluster-5 points to v3, which was trained for cluster 1",
        "alias cluster-5 points to v3, whose status is rolled_back",
    ]


def test_a_bad_cluster_is_refused_before_any_file_is_written(clustered: Registry) -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="cluster=.* whole number >= 0"):
            clustered.register(
                weights(9), key=f"bad{bad}", trigger="t", reason="r", period=1, cluster=bad
            )  # type: ignore[arg-type]
    assert sorted(p.name for p in (clustered.run_dir / "models").iterdir()) == [
        "v1.safetensors",
        "v2.safetensors",
        "v3.safetensors",
    ]


def test_alias_names_and_clusters_round_trip() -> None:
    assert [alias_cluster(cluster_alias(n)) for n in (0, 7, 123)] == [0, 7, 123]
    assert [alias_cluster(n) for n in ("cluster-", "cluster--1", "champion")] == [None] * 3

"""The registry on real SQLite files: lineage round trip, durability settings, idempotent keys,
crash leftovers, refusals that change nothing, decisions and invariants."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fedretrain.registry import (
    SCHEMA_VERSION,
    ModelFileError,
    ModelVersion,
    NotARunFolderError,
    Registry,
    RegistryError,
    SchemaVersionError,
    Status,
    config_hash,
    schema,
)
from fedretrain.registry import registry as registry_module
from fedretrain.registry.invariants import find_problems


def weights(fill: float) -> dict[str, np.ndarray]:
    """A two-array model whose every weight is ``fill`` (L2 distances are easy to check)."""
    return {
        "layer.weight": np.full((2, 3), fill, dtype=np.float32),
        "layer.bias": np.full(2, fill, dtype=np.float32),
    }


def register(registry: Registry, key: str, fill: float, **lineage: object) -> int:
    """Register ``weights(fill)`` under ``key``; lineage defaults to a drift retrain."""
    args: dict[str, object] = {"trigger": "drift", "reason": f"retrain {key}", "period": 1}
    args.update(lineage)
    return registry.register(weights(fill), key=key, **args).version  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry with v1 (champion, initial) only."""
    with Registry(tmp_path / "run", create=True) as reg:
        register(
            reg,
            "p0-initial",
            0.0,
            trigger="initial",
            reason="initial training",
            period=0,
            status=Status.champion,
        )
        yield reg


# ---------------------------------------------------------------------- opening


def test_a_new_registry_uses_wal_full_sync_and_stamps_its_schema(tmp_path: Path) -> None:
    with Registry(tmp_path / "run", create=True) as reg:
        assert reg.pragmas == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "foreign_keys": 1,
            "user_version": SCHEMA_VERSION,
        }
    raw = sqlite3.connect(tmp_path / "run" / "registry.sqlite")
    try:  # WAL is a property of the file, seen by any connection
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_full_sync_is_set_by_the_registry_not_inherited_from_a_default(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's compiled-in default may already be FULL; start every connection at OFF."""
    plain_connect = sqlite3.connect

    def connect_unsynced(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = plain_connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.execute("PRAGMA synchronous=OFF")
        return conn

    monkeypatch.setattr(schema.sqlite3, "connect", connect_unsynced)
    with Registry(registry.run_dir) as again:  # create=False: it exists
        assert again.pragmas["synchronous"] == 2
        assert again.pragmas["journal_mode"] == "wal"
        assert [v.version for v in again.versions()] == [1]


def test_a_folder_without_a_registry_is_refused_and_left_empty(tmp_path: Path) -> None:
    with pytest.raises(NotARunFolderError, match=r"not a fedretrain run folder.*registry\.sqlite"):
        Registry(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotARunFolderError, match="no such folder"):
        Registry(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_a_newer_schema_is_refused_naming_both_versions_and_the_file_is_untouched(
    registry: Registry,
) -> None:
    run_dir = registry.run_dir
    registry.close()
    raw = sqlite3.connect(run_dir / "registry.sqlite")
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    before = (run_dir / "registry.sqlite").read_bytes()
    with pytest.raises(SchemaVersionError) as caught:
        Registry(run_dir)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"schema version {SCHEMA_VERSION} at most" in message
    assert "upgrade fedretrain" in message
    assert (run_dir / "registry.sqlite").read_bytes() == before


def test_a_foreign_sqlite_file_and_a_non_database_are_refused_unchanged(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    raw = sqlite3.connect(foreign / "registry.sqlite")
    raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(NotARunFolderError, match="not a fedretrain registry"):
        Registry(foreign, create=True)  # create never takes over someone else's database
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "registry.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RegistryError, match="not a readable SQLite database"):
        Registry(garbage)
    assert (garbage / "registry.sqlite").read_bytes() == b"not sqlite at all" * 100


# ---------------------------------------------------------------------- registering


def test_lineage_and_arrays_round_trip(registry: Registry) -> None:
    v = registry.register(
        weights(0.5),
        key="p3-retrain",
        trigger="drift",
        reason="chi2 fired on sites 3, 5",
        period=3,
        parent=1,
        rounds=4,
        samples={3: 100, 5: 80},
        config_hash=config_hash("train:\n  lr: 0.1\n"),
        metrics={"accuracy": 0.91, "loss": math.nan},
        site_metrics={3: {"accuracy": 0.95}, 5: {"accuracy": 0.86}},
        epsilon={3: 1.25, 5: 2.5},
    )
    with Registry(registry.run_dir) as fresh:  # read back through another connection
        again = fresh.get(v.version)
    assert replace(again, metrics={}) == replace(v, metrics={})  # NaN != NaN: checked below
    assert again.metrics["accuracy"] == 0.91 and math.isnan(again.metrics["loss"])
    assert (v.version, v.parent, v.trigger, v.period, v.rounds) == (2, 1, "drift", 3, 4)
    assert v.sites == ("3", "5") and v.samples == {"3": 100, "5": 80}
    assert v.metrics["accuracy"] == 0.91 and math.isnan(v.metrics["loss"])
    assert v.site_metrics == {"3": {"accuracy": 0.95}, "5": {"accuracy": 0.86}}
    assert v.epsilon == {"3": 1.25, "5": 2.5}
    assert v.config_hash == config_hash("train:\n  lr: 0.1\n") and len(v.config_hash) == 64
    assert v.status is Status.candidate and registry.aliases()["candidate"] == 2
    assert v.file == "models/v2.safetensors"
    created = datetime.fromisoformat(v.created)
    assert created.tzinfo is not None and created.utcoffset() == UTC.utcoffset(None)
    loaded = registry.load(2)
    assert loaded.keys() == weights(0.5).keys()
    for name, array in weights(0.5).items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)
    assert loaded["layer.bias"].flags.writeable


def test_a_committed_key_returns_its_version_and_adds_nothing(registry: Registry) -> None:
    first = registry.register(weights(1.0), key="p3", trigger="drift", reason="a", period=3)
    events = len(registry.events())
    again = registry.register(weights(9.0), key="p3", trigger="other", reason="b", period=4)
    assert again == first
    assert [v.version for v in registry.versions()] == [1, 2]
    assert len(registry.events()) == events
    assert np.all(registry.load(2)["layer.bias"] == 1.0)  # the committed weights, not the new
    assert registry.find("p3") == first and registry.find("nope") is None


def test_two_handles_on_one_folder_share_commits_and_keys(registry: Registry) -> None:
    with Registry(registry.run_dir) as other:
        v = register(other, "p2", 2.0)
        assert registry.get(v).key == "p2"
        assert register(registry, "p2", 7.0) == v
        assert register(registry, "p3", 3.0) == v + 1


def test_a_crash_between_file_and_commit_leaves_a_stray_file_that_is_replaced(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = registry_module.Registry._event

    def crash(self: Registry, kind: object, *args: object, **kwargs: object) -> int:
        if kind == "register":
            raise KeyboardInterrupt("killed before COMMIT")
        return original(self, kind, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_module.Registry, "_event", crash)
    with pytest.raises(KeyboardInterrupt):
        register(registry, "p2", 5.0)
    monkeypatch.undo()
    stray = registry.run_dir / "models" / "v2.safetensors"
    assert stray.exists()  # the file was written first...
    assert [v.version for v in registry.versions()] == [1]  # ...but no row names it
    assert registry.find("p2") is None
    assert registry.check_invariants() == []  # a stray file is not a problem
    assert register(registry, "p2", 6.0) == 2  # the resumed run takes the same number
    assert np.all(registry.load(2)["layer.weight"] == 6.0)


def test_invalid_lineage_is_refused_before_any_file_is_written(registry: Registry) -> None:
    models = registry.run_dir / "models"
    with pytest.raises(ValueError, match="samples of site 3"):
        register(registry, "bad", 1.0, samples={3: -1})
    with pytest.raises(RegistryError, match="parent v7 does not exist"):
        register(registry, "orphan", 1.0, parent=7)
    with pytest.raises(ValueError, match="at least one array"):
        registry.register({}, key="empty", trigger="x", reason="y", period=1)
    assert sorted(p.name for p in models.iterdir()) == ["v1.safetensors"]
    assert len(registry.versions()) == 1


# ---------------------------------------------------------------------- model files


def test_a_corrupt_model_file_is_reported_with_its_expected_hash_and_not_rewritten(
    registry: Registry,
) -> None:
    path = registry.model_path(1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    expected = registry.get(1).sha256
    with pytest.raises(ModelFileError) as caught:
        registry.load(1)
    assert str(path) in str(caught.value) and f"expected {expected}" in str(caught.value)
    assert "corrupt" in str(caught.value)
    assert path.read_bytes() == bytes(data)
    problems = registry.check_invariants()
    assert len(problems) == 1 and "corrupt" in problems[0] and expected in problems[0]


def test_a_missing_model_file_is_reported_and_never_promoted(registry: Registry) -> None:
    register(registry, "p2", 2.0)
    registry.model_path(2).unlink()
    with pytest.raises(ModelFileError, match=r"v2\.safetensors of v2 is missing \(expected sha256"):
        registry.load(2)
    with pytest.raises(ModelFileError):
        registry.promote(2, reason="would serve a missing file")
    assert registry.champion().version == 1  # type: ignore[union-attr]
    assert registry.get(2).status is Status.candidate
    assert registry.events(kind="promote", version=2) == []
    assert not registry.model_path(2).exists()


# ---------------------------------------------------------------------- decisions


def test_promote_retires_the_champion_and_moves_both_aliases(registry: Registry) -> None:
    register(registry, "p2", 2.0, parent=1)
    promoted = registry.promote(2, reason="gate passed", period=2)
    assert promoted.status is Status.champion
    assert registry.get(1).status is Status.retired
    assert registry.aliases() == {"champion": 2}
    (event,) = registry.events(kind="promote", version=2)
    assert event.period == 2
    assert event.payload == {
        "from": 1,
        "to": 2,
        "reason": "gate passed",
        "manual": False,
        "previous_status": "candidate",
    }
    count = len(registry.events())
    assert registry.promote(2, reason="again").status is Status.champion  # a no-op
    assert len(registry.events()) == count
    assert registry.check_invariants() == []


def test_reject_ends_a_candidate_and_refuses_anything_else(registry: Registry) -> None:
    register(registry, "p2", 2.0, parent=1)
    register(registry, "p3", 3.0, parent=1)
    assert registry.reject(3, reason="site 4 regressed", period=3).status is Status.rejected
    assert "candidate" not in registry.aliases()
    ended = registry.reject(2, reason="canary lost", status=Status.rolled_back)
    assert ended.status is Status.rolled_back
    with pytest.raises(RegistryError, match="v1 is champion, not a candidate"):
        registry.reject(1, reason="no")
    with pytest.raises(ValueError, match="rejected or rolled_back"):
        registry.reject(2, reason="no", status=Status.retired)
    assert registry.check_invariants() == []


def test_rollback_goes_to_the_parent_or_the_named_version(registry: Registry) -> None:
    register(registry, "p2", 2.0, parent=1)
    registry.promote(2, reason="ok")
    register(registry, "p3", 3.0, parent=2)
    registry.promote(3, reason="ok")
    back = registry.rollback(reason="canary regressed", period=5)
    assert back.version == 2 and back.status is Status.champion
    assert registry.get(3).status is Status.rolled_back
    (event,) = registry.events(kind="rollback")
    assert event.payload == {"from": 3, "to": 2, "reason": "canary regressed", "manual": False}
    assert registry.rollback(to=1, reason="operator", manual=True).version == 1
    assert [registry.get(v).status for v in (1, 2, 3)] == [
        Status.champion,
        Status.rolled_back,
        Status.rolled_back,
    ]
    with pytest.raises(RegistryError, match="v1 has no parent to roll back to"):
        registry.rollback(reason="no")
    with pytest.raises(RegistryError, match="v1 is already the champion"):
        registry.rollback(to=1, reason="no")
    assert registry.check_invariants() == []


def test_keyed_decisions_are_idempotent_on_resume(registry: Registry) -> None:
    register(registry, "p2", 2.0, parent=1)
    registry.promote(2, reason="ok")
    register(registry, "p3", 3.0, parent=2)
    registry.promote(3, reason="ok")
    registry.rollback(reason="canary", key="p6-rollback")
    assert registry.rollback(reason="canary", key="p6-rollback").version == 2  # not v1
    assert len(registry.events(kind="rollback")) == 1
    first = registry.record("gate", period=6, version=3, payload={"promote": False}, key="p6-g")
    again = registry.record("gate", period=6, version=3, payload={"other": 1}, key="p6-g")
    assert again == first and len(registry.events(kind="gate")) == 1


def test_events_are_queried_by_kind_period_and_version_and_payloads_are_strict_json(
    registry: Registry,
) -> None:
    registry.record("trigger", period=1, payload={"retrain": False, "p": np.float64(0.3)})
    registry.record("trigger", period=2, payload={"stat": math.nan, "sites": (3, 5)})
    gate = registry.record("gate", period=2, version=1, payload={"ok": np.bool_(True)})
    assert [e.period for e in registry.events(kind="trigger")] == [1, 2]
    assert [e.kind for e in registry.events(period=2)] == ["trigger", "gate"]
    assert registry.events(kind="gate", version=1) == [gate]
    assert registry.events(since=gate.id) == []
    assert registry.events(kind="trigger")[0].payload == {"retrain": False, "p": 0.3}
    assert registry.events(kind="trigger")[1].payload == {"stat": None, "sites": [3, 5]}
    assert gate.payload == {"ok": True}
    raw = sqlite3.connect(registry.path)
    try:
        for (payload,) in raw.execute("SELECT payload FROM events"):
            json.loads(payload, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    finally:
        raw.close()
    with pytest.raises(RegistryError, match="no version 9"):
        registry.record("gate", version=9)


def test_events_are_append_only_and_lineage_immutable_in_the_file(registry: Registry) -> None:
    raw = sqlite3.connect(registry.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE events SET kind = 'forged'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM events")
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            raw.execute("UPDATE versions SET reason = 'rewritten'")
        with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
            raw.execute("DELETE FROM versions")
    finally:
        raw.close()


def test_only_the_candidate_alias_is_set_directly(registry: Registry) -> None:
    register(registry, "p2", 2.0)
    registry.set_alias("candidate", None, reason="operator cleared it")
    assert registry.aliases() == {"champion": 1} and registry.candidate() is None
    event = registry.events(kind="alias")[-1]
    assert event.payload == {
        "alias": "candidate",
        "version": None,
        "previous": 2,
        "reason": "operator cleared it",
    }
    with pytest.raises(ValueError, match="promote"):
        registry.set_alias("champion", 2, reason="no")


# ---------------------------------------------------------------------- invariants


def _raw(registry: Registry, *statements: str) -> None:
    raw = sqlite3.connect(registry.path)
    try:
        for statement in statements:
            raw.execute(statement)
        raw.commit()
    finally:
        raw.close()


def test_invariants_hold_for_an_empty_and_a_busy_registry(tmp_path: Path) -> None:
    with Registry(tmp_path, create=True) as reg:
        assert reg.check_invariants() == []  # no version, no champion needed
        register(reg, "p0", 0.0, status=Status.champion)
        for n in range(1, 4):
            register(reg, f"p{n}", float(n), parent=n)
            if n % 2:
                reg.promote(n + 1, reason="ok")
            else:
                reg.reject(n + 1, reason="no")
        assert reg.check_invariants() == []


def test_two_champions_and_a_missing_alias_are_reported(registry: Registry) -> None:
    register(registry, "p2", 2.0)
    _raw(registry, "UPDATE versions SET status = 'champion' WHERE version = 2")
    assert registry.check_invariants() == [
        "expected exactly one champion, found 2 (v1, v2)",
        "alias candidate points to v2, whose status is champion",
    ]
    _raw(registry, "UPDATE versions SET status = 'retired'", "DELETE FROM aliases")
    assert registry.check_invariants() == [
        "expected exactly one champion, found 0 (none)",
        "the champion alias is not set",
    ]


def test_gaps_in_numbers_and_dangling_aliases_are_reported(registry: Registry) -> None:
    row = registry.get(1)
    _raw(
        registry,
        "INSERT INTO versions SELECT 3, 'forged', NULL, \"trigger\", reason, period, rounds, "
        "samples, config_hash, metrics, site_metrics, epsilon, file, sha256, 'retired', "
        "created, cluster, trained FROM versions WHERE version = 1",
        "PRAGMA foreign_keys=OFF",
        "INSERT INTO aliases VALUES ('candidate', 8)",
    )
    problems = registry.check_invariants()
    assert problems == [
        "version numbers are not contiguous from 1: [1, 3]",
        "alias candidate points to v8, which does not exist",
    ]
    assert registry.get(3).sha256 == row.sha256


def test_find_problems_reports_a_dangling_parent_and_every_file_error(registry: Registry) -> None:
    """What the file's constraints forbid, the pure check still catches (a hand-edited copy)."""
    v1 = registry.get(1)
    orphan = replace(v1, version=2, key="k2", parent=9, status=Status.retired)

    def verify(version: ModelVersion) -> None:
        raise ModelFileError(f"file of v{version.version} is bad")

    assert find_problems([v1, orphan], {"champion": 1}, verify) == [
        "file of v1 is bad",
        "v2's parent v9 does not exist",
        "file of v2 is bad",
    ]
    assert find_problems([v1, orphan], {"champion": 1}, lambda v: None) == [
        "v2's parent v9 does not exist"
    ]


def test_model_bytes_do_not_depend_on_the_order_of_the_arrays() -> None:
    """A resumed run rebuilds state dicts in another order; its versions must hash the same."""
    from fedretrain.registry.model_file import encode, sha256

    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(size=(3, 2)).astype(np.float32) for name in ("w2", "b1", "w1")}
    shuffled = dict(reversed(list(arrays.items())))
    assert list(shuffled) != list(arrays)
    metadata = {f"key{i}": str(i) for i in range(8)}
    backwards = dict(reversed(list(metadata.items())))
    assert sha256(encode(arrays, metadata)) == sha256(encode(shuffled, backwards))

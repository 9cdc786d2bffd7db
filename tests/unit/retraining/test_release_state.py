"""The lifecycle's state: frozen, serialised with a schema version, read back from format 1."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedretrain.checkpoint import CheckpointStore, RunState
from fedretrain.retraining.release_state import SCHEMA, Canary, ReleaseState, Watch


def test_state_round_trips_through_json() -> None:
    state = ReleaseState(
        Canary(3, (1, 4), start=5, before={1: (7, 10), 4: (9, 10)}, during={1: (8, 10)}),
        Watch(2, 1, until=6),
    )
    record = json.loads(json.dumps(state.to_dict()))
    assert record["schema"] == SCHEMA
    assert ReleaseState.from_dict(record) == state


def test_state_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReleaseState().canary = None  # type: ignore[misc]


def test_a_newer_schema_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="upgrade fedretrain"):
        ReleaseState.from_dict({"schema": SCHEMA + 1, "canary": None, "watch": None})


def test_a_format_1_checkpoint_with_untyped_canary_and_watch_still_loads(tmp_path: Path) -> None:
    # What fedretrain wrote before the lifecycle had typed state: site ids as text.
    legacy = {
        "format": "fedretrain.checkpoint",
        "version": 1,
        "state": {
            "completed_period": 4,
            "server_round": 9,
            "random_state": [],
            "edges": None,
            "canary": {
                "version": 3,
                "sites": [0, 2],
                "start": 4,
                "before": {"0": [5, 10], "2": [6, 10]},
                "during": {"0": [9, 10]},
            },
            "watch": {"version": 2, "parent": 1, "until": 5},
            "plateau": None,
            "period_started": None,
        },
        "arrays": {},
    }
    (tmp_path / "state.json").write_text(json.dumps(legacy))
    state, _ = CheckpointStore(tmp_path).load()
    assert state.release == ReleaseState(
        Canary(3, (0, 2), 4, before={0: (5, 10), 2: (6, 10)}, during={0: (9, 10)}),
        Watch(2, 1, 5),
    )
    assert (state.completed_period, state.server_round) == (4, 9)
    # Its monitor started afresh after every retrain: replay must do the same.
    assert state.keep_reference_on_reject is False


def test_the_checkpoint_keeps_the_release_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    state = RunState(completed_period=2, release=ReleaseState(watch=Watch(2, 1, 3)))
    store.save(state, {})
    loaded, _ = store.load()
    assert loaded.release == state.release
    assert loaded.keep_reference_on_reject is True
    assert json.loads((tmp_path / "state.json").read_text())["version"] == 2

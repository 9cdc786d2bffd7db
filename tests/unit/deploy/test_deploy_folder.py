"""A site folder with real CSV and Parquet files: validation, quarantine, periods, restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedretrain.deploy.folder import STATE_FILE, SiteFolder
from fedretrain.deploy.schema import FileIssue, FileRejected, FolderSchema, RowIssue, check_frame

SCHEMA = FolderSchema(features=("x0", "x1"), label="y", labels=(0, 1, 2))


def _frame(n: int, seed: int = 0, label_offset: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x0": rng.normal(size=n),
            "x1": rng.normal(size=n),
            "y": (np.arange(n) + label_offset) % 3,
            "note": ["kept out of x"] * n,  # extra columns are ignored
        }
    )


def _put(folder: Path, name: str, content: pd.DataFrame | str, mtime: float) -> Path:
    """Write a file with a given modification time (seconds), as the site's pipeline would."""
    path = folder / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".csv"):
        content.to_csv(path, index=False)
    else:
        content.to_parquet(path, index=False)
    os.utime(path, (mtime, mtime))
    return path


def _site(folder: Path, schema: FolderSchema = SCHEMA) -> SiteFolder:
    return SiteFolder(folder, schema, min_age_s=0.0)


def test_good_csv_and_parquet_become_one_period_in_arrival_order(tmp_path: Path) -> None:
    first, second = _frame(5, seed=1), _frame(7, seed=2)
    _put(tmp_path, "b.parquet", second, mtime=2_000)
    _put(tmp_path, "a.csv", first, mtime=1_000)
    data = _site(tmp_path).take(0)

    assert data.files == ("a.csv", "b.parquet")
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    expected = pd.concat([first, second])
    np.testing.assert_array_equal(data.x, expected[["x0", "x1"]].to_numpy(np.float32))
    np.testing.assert_array_equal(data.y, expected["y"].to_numpy())
    assert data.report == {
        "period": 0,
        "files": 2,
        "rows": 12,
        "dropped_rows": 0,
        "quarantined_files": 0,
        "quarantined": [],
    }


def test_same_mtime_orders_by_name(tmp_path: Path) -> None:
    _put(tmp_path, "z.csv", _frame(2, label_offset=2), mtime=1_000)
    _put(tmp_path, "m.csv", _frame(2, label_offset=1), mtime=1_000)
    assert _site(tmp_path).take(0).files == ("m.csv", "z.csv")


def test_timestamp_column_orders_rows_across_files(tmp_path: Path) -> None:
    schema = FolderSchema(("x0",), "y", (0, 1), timestamp="t")
    late = "x0,y,t\n3,1,2024-01-03T00:00:00Z\n1,0,2024-01-01\n"
    early = pd.DataFrame(
        {"x0": [2.0, 4.0], "y": [1, 0], "t": pd.to_datetime(["2024-01-02", "2024-01-04"])}
    )
    _put(tmp_path, "first.csv", late, mtime=1_000)  # arrived first, holds the earliest row
    _put(tmp_path, "second.parquet", early, mtime=2_000)
    data = _site(tmp_path, schema).take(0)
    assert data.x[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert data.y.tolist() == [0, 1, 1, 0]


def test_numeric_timestamps_are_unix_seconds_and_bad_ones_drop_the_row(tmp_path: Path) -> None:
    schema = FolderSchema(("x0",), "y", (0, 1), timestamp="t")
    frame = pd.DataFrame({"x0": [1.0, 2.0, 3.0], "y": [0, 1, 0], "t": [30, 10, 20]})
    checked = check_frame(frame, schema)
    assert checked.timestamps is not None
    assert (checked.timestamps // 10**9).tolist() == [30, 10, 20]
    bad = pd.DataFrame({"x0": [1.0, 2.0, 3.0], "y": [0, 1, 0], "t": ["2024-01-01", "soon", None]})
    assert check_frame(bad, schema, max_bad_row_fraction=1.0).dropped == {RowIssue.BAD_TIMESTAMP: 2}


def test_wrong_columns_quarantine_the_file_without_touching_it(tmp_path: Path) -> None:
    good = _put(tmp_path, "good.csv", _frame(4), mtime=1_000)
    wrong = _put(tmp_path, "wrong.csv", _frame(4).rename(columns={"x1": "x2"}), mtime=1_001)
    content = wrong.read_bytes()
    site = _site(tmp_path)
    data = site.take(0)

    assert data.files == (good.name,)
    assert data.report["quarantined_files"] == 1
    assert data.report["quarantined"] == ["wrong.csv: missing_columns: missing columns ['x1']"]
    assert wrong.read_bytes() == content  # user data stays where it was
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["files"]["wrong.csv"]["status"] == "quarantined"
    assert site.pending() == []  # not examined again ...

    fixed = _frame(3, seed=5)
    _put(tmp_path, "wrong.csv", fixed, mtime=5_000)  # ... until it is rewritten
    assert site.pending() == [wrong]
    assert site.take(1).files == ("wrong.csv",)
    assert site.report()["quarantined_files"] == 0


def test_a_stray_non_numeric_value_drops_its_row(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", "x0,x1,y\n1,2,0\n1,abc,1\n3,4,2\n5,6,0\n", mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.x.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert data.y.tolist() == [0, 2, 0]
    assert data.report["dropped.non_numeric_feature"] == 1


def test_a_text_feature_column_quarantines_the_file(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", "x0,x1,y\n1,red,0\n1,blue,1\n3,green,2\n", mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.files == ()
    assert data.report["quarantined"] == [
        "a.csv: non_numeric_column: feature 'x1' is not numeric (3 of 3 values, e.g. 'red')"
    ]


def test_unknown_and_missing_labels_drop_rows(tmp_path: Path) -> None:
    rows = "x0,x1,y\n1,1,0\n2,2,7\n3,3,\n4,4,2\n5,5,1.5\n6,6,1\n7,7,2.0\n"
    _put(tmp_path, "a.csv", rows, mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.y.tolist() == [0, 2, 1, 2]
    assert data.report["dropped.unknown_label"] == 2  # 7 and 1.5
    assert data.report["dropped.missing_label"] == 1


def test_string_labels_map_to_their_position(tmp_path: Path) -> None:
    schema = FolderSchema(("x0",), "label", ("no", "yes"))
    _put(tmp_path, "a.csv", "x0,label\n1,yes\n2,no\n3,maybe\n4, yes\n", mtime=1_000)
    data = _site(tmp_path, schema).take(0)
    assert data.y.tolist() == [1, 0, 1]
    assert data.report["dropped.unknown_label"] == 1


def test_nan_and_infinite_features_drop_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "x0": [1.0, np.nan, 3.0, np.inf, 5.0, 6.0, 7.0, 8.0, 9.0],
            "x1": [1.0, 2.0, None, 4.0, 1e39, 6.0, 7.0, 8.0, 9.0],  # 1e39 overflows float32
            "y": [0, 1, 2, 0, 1, 2, 0, 1, 2],
        }
    )
    _put(tmp_path, "a.parquet", frame, mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.x.tolist() == [[1, 1], [6, 6], [7, 7], [8, 8], [9, 9]]
    assert data.report["dropped.missing_feature"] == 2
    assert data.report["dropped.non_finite_feature"] == 2
    assert data.report["dropped_rows"] == 4
    assert np.isfinite(data.x).all()


def test_a_file_mostly_bad_rows_is_quarantined(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", "x0,x1,y\n1,1,5\n2,2,5\n3,3,0\n", mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.files == ()
    assert data.report["quarantined"] == [
        "a.csv: too_many_bad_rows: 2 of 3 rows bad (unknown_label=2)"
    ]


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", ""), ("broken.parquet", "this is not parquet"), ("bad.csv", '"x0,x1\n1,2')],
)
def test_unreadable_files_are_quarantined(tmp_path: Path, name: str, content: str) -> None:
    _put(tmp_path, name, content, mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.files == ()
    assert data.report["quarantined"][0].startswith(f"{name}: unreadable: ")


def test_header_only_file_is_used_with_no_rows(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", "x0,x1,y\n", mtime=1_000)
    data = _site(tmp_path).take(0)
    assert data.files == ("a.csv",)
    assert data.x.shape == (0, 2) and data.y.shape == (0,)


def test_restart_resumes_from_the_state_file(tmp_path: Path) -> None:
    _put(tmp_path, "day1.csv", _frame(4, seed=1), mtime=1_000)
    _put(tmp_path, "day2.parquet", _frame(3, seed=2), mtime=2_000)
    first = _site(tmp_path).take(0)
    assert first.files == ("day1.csv", "day2.parquet")

    _put(tmp_path, "day3.csv", _frame(5, seed=3), mtime=3_000)
    restarted = _site(tmp_path)  # a new agent process
    assert restarted.last_period == 0
    assert [p.name for p in restarted.pending()] == ["day3.csv"]
    second = restarted.take(1)
    assert second.files == ("day3.csv",)
    np.testing.assert_array_equal(second.x, _frame(5, seed=3)[["x0", "x1"]].to_numpy(np.float32))

    again = _site(tmp_path).take(0)  # a period asked for again returns the same data
    assert again.files == first.files
    np.testing.assert_array_equal(again.x, first.x)
    np.testing.assert_array_equal(again.y, first.y)
    with pytest.raises(ValueError, match="older than the last period"):
        restarted.take(-1)
    assert restarted.report()["files"] == 3 and restarted.report()["rows"] == 12


def test_an_earlier_period_is_read_again_for_a_training_buffer(tmp_path: Path) -> None:
    """Issue 14, item 4: a site trains on its windows since it joined its cluster, so it reads
    earlier periods again; one it never took (offline) is None, and taking it is not possible
    any more; a file that has gone is left out and named."""
    first, second = _frame(4, seed=1), _frame(6, seed=2)
    _put(tmp_path, "a.csv", first, mtime=1_000)
    site = _site(tmp_path)
    site.take(0)
    _put(tmp_path, "b.csv", second, mtime=2_000)
    site.take(2)  # the site was offline in period 1
    again = _site(tmp_path)  # a restarted agent
    np.testing.assert_array_equal(again.taken(0).y, first["y"].to_numpy())
    np.testing.assert_array_equal(again.taken(2).x, second[["x0", "x1"]].to_numpy(np.float32))
    assert again.taken(1) is None and again.taken(3) is None
    with pytest.raises(ValueError, match="older than the last period taken"):
        again.take(1)
    assert again.pending() == []  # reading again assigns nothing
    (tmp_path / "a.csv").unlink()
    gone = again.taken(0)
    assert len(gone.y) == 0 and gone.report["quarantined"][0].startswith("a.csv: ")


def test_a_period_with_no_new_files_is_empty_and_recorded(tmp_path: Path) -> None:
    site = _site(tmp_path)
    data = site.take(4)
    assert data.files == () and data.x.shape == (0, 2) and data.x.dtype == np.float32
    assert site.last_period == 4
    _put(tmp_path, "late.csv", _frame(2), mtime=1_000)
    assert site.take(4).files == ()  # period 4 is closed: the late file waits for period 5
    assert site.take(5).files == ("late.csv",)


def test_fresh_hidden_and_temporary_files_wait(tmp_path: Path) -> None:
    _put(tmp_path, ".hidden.csv", _frame(2), mtime=1_000)
    _put(tmp_path, "upload.csv.part", _frame(2), mtime=1_000)
    _put(tmp_path, "notes.txt", "not data", mtime=1_000)
    fresh = tmp_path / "fresh.csv"
    _frame(2).to_csv(fresh, index=False)  # modified just now
    patient = SiteFolder(tmp_path, SCHEMA, min_age_s=60.0)
    assert patient.pending() == []
    assert _site(tmp_path).pending() == [fresh]


def test_state_file_is_versioned_and_replaced_atomically(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", _frame(2), mtime=1_000)
    _site(tmp_path).take(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, "a.csv"]  # no temp left
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["version"] == 1 and state["periods"] == {"0": ["a.csv"]}
    state["version"] = 99
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="state version 99"):
        _site(tmp_path)


def test_reports_are_flat_and_json_ready(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", "x0,x1,y\n1,1,0\n2,,1\n3,3,2\n", mtime=1_000)
    _put(tmp_path, "b.csv", "x0,y\n1,0\n", mtime=1_001)
    site = _site(tmp_path)
    for report in (site.take(0).report, site.report()):
        assert json.loads(json.dumps(report)) == report
        for value in report.values():
            assert isinstance(value, int | str) or all(isinstance(v, str) for v in value)
    assert site.report()["dropped.missing_feature"] == 1
    assert site.report()["quarantined"] == ["b.csv: missing_columns: missing columns ['x1']"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": (), "label": "y", "labels": (0,)}, "at least one column"),
        ({"features": ("a", "a"), "label": "y", "labels": (0,)}, "repeat a column"),
        ({"features": ("a",), "label": "y", "labels": ()}, "at least one allowed"),
        ({"features": ("a",), "label": "y", "labels": (0, "1")}, "all int or all str"),
        ({"features": ("a",), "label": "y", "labels": (True, False)}, "all int or all str"),
        ({"features": ("a",), "label": "y", "labels": (1, 1)}, "repeat a value"),
        ({"features": ("a",), "label": "y", "labels": (0,), "timestamp": "y"}, "timestamp"),
        (
            {"features": ("a",), "label": "y", "labels": (0,), "group": "a", "groups": (0,)},
            "group column 'a' is also a feature",
        ),
        (
            {"features": ("a",), "label": "y", "labels": (0,), "group": "g"},
            "with group column 'g', groups must list at least one",
        ),
        (
            {"features": ("a",), "label": "y", "labels": (0,), "groups": ("n",)},
            "without a group column",
        ),
    ],
)
def test_schema_errors_name_the_problem(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FolderSchema(**kwargs)  # type: ignore[arg-type]


def test_check_frame_raises_file_rejected_with_its_issue() -> None:
    with pytest.raises(FileRejected) as info:
        check_frame(pd.DataFrame({"x0": [1.0]}), SCHEMA)
    assert info.value.issue is FileIssue.MISSING_COLUMNS


GROUPED = FolderSchema(
    features=("x0", "x1"), label="y", labels=(0, 1, 2), timestamp="t", group="region",
    groups=("north", "south"),
)  # fmt: skip


def test_a_group_column_gives_each_row_its_group_and_drops_unknown_ones(tmp_path: Path) -> None:
    """Issue 17, item 4, in deployment: each row's group is its value's position in the
    declared ``groups`` (the same at every site), kept in the rows' timestamp order; a row
    with a missing or undeclared group is dropped and counted. The group is not a feature."""
    first = _frame(4, seed=1).assign(t=[4, 2, 9, 7], region=["south", "north", None, "west"])
    second = _frame(3, seed=2).assign(t=[1, 8, 3], region=["north", "south", "south"])
    _put(tmp_path, "a.csv", first, mtime=1_000)
    _put(tmp_path, "b.parquet", second, mtime=2_000)
    data = _site(tmp_path, GROUPED).take(0)
    rows = pd.concat([first, second]).dropna(subset=["region"])
    rows = rows[rows["region"] != "west"].sort_values("t", kind="stable")
    assert data.groups is not None and data.groups.dtype == np.int64
    assert data.groups.tolist() == [("north", "south").index(r) for r in rows["region"]]
    np.testing.assert_array_equal(data.x, rows[["x0", "x1"]].to_numpy(np.float32))
    assert data.report["dropped.missing_group"] == 1
    assert data.report["dropped.unknown_group"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _site(empty, GROUPED).take(0).groups.tolist() == []  # type: ignore[union-attr]


def test_a_file_without_the_group_column_is_quarantined(tmp_path: Path) -> None:
    _put(tmp_path, "a.csv", _frame(4).assign(t=[1, 2, 3, 4]), mtime=1_000)
    site = _site(tmp_path, GROUPED)
    assert site.take(0).groups.tolist() == []  # type: ignore[union-attr]
    assert site.report()["quarantined"] == ["a.csv: missing_columns: missing columns ['region']"]

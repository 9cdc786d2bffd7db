"""The run's CSV logs (issue 18, item 8): a row is appended, not the whole file rewritten, and
resume drops what a kill tore."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from fedretrain.run_logs import append_row, cut_csv, restore_rows, write_rows


@dataclass
class Row:
    period: int
    accuracy: float
    reason: str = ""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_appending_writes_only_the_new_row(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    append_row(path, Row(0, 0.5, 'a "quoted", reason\nover two lines'))
    before = path.read_bytes()
    append_row(path, Row(1, math.nan))
    after = path.read_bytes()
    assert after.startswith(before)  # the first row's bytes are where they were
    assert _rows(path) == [
        {"period": "0", "accuracy": "0.5", "reason": 'a "quoted", reason\nover two lines'},
        {"period": "1", "accuracy": "", "reason": ""},
    ]


def test_resume_drops_a_torn_last_line_even_with_every_cell(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    for period in range(3):
        append_row(path, Row(period, 0.123456))
    whole = path.read_bytes()
    path.write_bytes(whole[: -len(b"456\r\n")])  # killed mid-write: "2,0.123" has both cells
    kept = cut_csv(path, lambda r: True)
    assert [r["period"] for r in kept] == ["0", "1"]
    append_row(path, Row(2, 0.25))
    assert [(r["period"], r["accuracy"]) for r in _rows(path)][-1] == ("2", "0.25")
    assert len(_rows(path)) == 3


def test_restore_keeps_rows_up_to_the_checkpoint_and_mends_an_older_header(
    tmp_path: Path,
) -> None:
    @dataclass
    class Old:
        period: int
        accuracy: float

    path = tmp_path / "log.csv"
    write_rows(path, [Old(0, 0.5), Old(1, 0.6), Old(2, 0.7)])
    kept = restore_rows(path, Row, lambda r: int(r["period"]) <= 1)
    assert kept == [Row(0, 0.5), Row(1, 0.6)]
    append_row(path, Row(2, 0.8, "retrained"))
    assert _rows(path)[-1] == {"period": "2", "accuracy": "0.8", "reason": "retrained"}
    assert list(_rows(path)[0]) == ["period", "accuracy", "reason"]

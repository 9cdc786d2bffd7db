"""The run's plots label whole rounds and periods, and privacy.png shows every site (issue 16,
item 7: short runs had ticks at 0.5, and equal ε curves hid each other)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from fedretrain.privacy.tracking import plot_epsilon
from fedretrain.report import plot_metrics
from fedretrain.timeline import plot_timeline


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions save, kept to read their axes."""
    figures: list[Figure] = []
    save = Figure.savefig

    def keep(self: Figure, *args: object, **kwargs: object) -> None:
        figures.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _whole(ticks: list[float]) -> bool:
    return all(math.isclose(t, round(t)) for t in ticks)


def test_a_two_round_run_s_metrics_have_whole_round_ticks(tmp_path: Path, drawn) -> None:
    table = pd.DataFrame(
        {
            "round": [0, 1, 2],
            "accuracy": [0.1, 0.5, 0.7],
            "f1": [0.1, 0.4, 0.6],
            "eval_loss": [2.3, 1.5, 1.0],
            "train_loss": [math.nan, 1.6, 1.1],
        }
    )
    plot_metrics(table, tmp_path / "metrics.png")
    [figure] = drawn
    for axis in figure.axes:
        assert _whole(list(axis.get_xticks())), axis.get_xticks()


def test_a_short_timeline_has_whole_period_ticks(tmp_path: Path, drawn) -> None:
    table = pd.DataFrame(
        {
            "period": [0, 1, 2],
            "accuracy": [0.9, 0.5, 0.9],
            "retrain": [True, False, True],
            "alarms": ["", "", "binomial"],
            "validation_accuracy": [0.9, math.nan, 0.95],
            "action": ["initial", "serve", "warm"],
            "serving_version": [1, 1, 2],
        }
    )
    plot_timeline(table, [2], tmp_path / "timeline.png")
    [figure] = drawn
    assert _whole(list(figure.axes[0].get_xticks()))


def test_sites_that_spent_the_same_share_one_labelled_line(tmp_path: Path, drawn) -> None:
    rows = [
        {"server_round": r, "site": s, "epsilon": r * (0.5 if s < 9 else 0.7)}
        for r in (1, 2)
        for s in range(10)
    ]
    plot_epsilon(pd.DataFrame(rows), tmp_path / "privacy.png")
    [figure] = drawn
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["0-8 (9)", "9"]  # every site is named; none hides under another
    assert _whole(list(figure.axes[0].get_xticks()))

"""TensorBoard tracking (issue 16, item 1), read back with TensorBoard's own event reader: scalars
by round and by period, ε per site, a resumed run that reads as the uninterrupted one, and a
folder that cannot be written costing one warning and nothing else."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from fedretrain.config import compose  # noqa: E402
from fedretrain.preflight import to_typed  # noqa: E402
from fedretrain.registry import Registry  # noqa: E402
from fedretrain.report import RoundRow  # noqa: E402
from fedretrain.timeline import PeriodRow  # noqa: E402
from fedretrain.tracking import (  # noqa: E402
    SITE_SERIES,
    TensorboardTracker,
    build_tracker,
)


def _tracker(run_dir: Path) -> TensorboardTracker:
    cfg = to_typed(compose(["tracking=tensorboard"]), build_targets=False)
    tracker = build_tracker(cfg, run_dir, "")
    assert isinstance(tracker, TensorboardTracker)
    return tracker


def _round(n: int, accuracy: float) -> RoundRow:
    return RoundRow(n, 0.5, 0.4, accuracy, 0.8, 0.8, 0.8, 2, 2, 40, 0.1)


def _period(p: int, accuracy: float) -> PeriodRow:
    return PeriodRow(
        p, accuracy, 0.3, 0.9, 200, 2, 0, False, "", "", False, "", "serve", 0, 1, math.nan, 1.0
    )


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]


def test_rounds_periods_and_epsilon_per_site_are_scalars(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    for n, accuracy in enumerate((0.2, 0.6, 0.9)):
        tracker.round(_round(n, accuracy), {0: 0.5 * n, 1: 0.25 * n})
    with Registry(tmp_path, create=True) as registry:
        tracker.period(_period(0, 0.7), registry)
        tracker.period(_period(1, 0.4), registry)
        tracker.finish({}, registry)
    rounds, periods = tmp_path / "tensorboard" / "rounds", tmp_path / "tensorboard" / "periods"
    assert _scalars(rounds, "round/accuracy") == [(0, 0.2), (1, 0.6), (2, 0.9)]
    assert _scalars(rounds, "epsilon/site_0") == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert _scalars(rounds, "epsilon/max")[-1] == (2, 1.0)
    assert _scalars(rounds, "epsilon/median")[-1] == (2, 0.75)
    assert _scalars(periods, "period/accuracy") == [(0, 0.7), (1, 0.4)]
    events = EventAccumulator(str(periods))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "period/validation_accuracy" not in tags  # NaN: nothing to draw
    assert "period/retrain" not in tags  # a flag, not a number


def test_a_large_federation_logs_epsilon_max_and_median_only(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    tracker.round(_round(1, 0.5), {site: float(site) for site in range(SITE_SERIES + 1)})
    events = EventAccumulator(str(tmp_path / "tensorboard" / "rounds"))
    events.Reload()
    assert {t for t in events.Tags()["scalars"] if t.startswith("epsilon/")} == {
        "epsilon/max",
        "epsilon/median",
    }


def test_a_resumed_run_hides_what_the_crashed_process_logged_past_its_resume_point(
    tmp_path: Path,
) -> None:
    crashed = _tracker(tmp_path)
    for n in range(5):  # rounds 3 and 4 were lost with the process: resume trains them again
        crashed.round(_round(n, 0.1 * n), {})
    resumed = _tracker(tmp_path)  # never closed the first: a kill -9
    for n in range(3, 6):
        resumed.round(_round(n, 0.5 + 0.1 * n), {})
    history = _scalars(tmp_path / "tensorboard" / "rounds", "round/accuracy")
    assert [step for step, _ in history] == [0, 1, 2, 3, 4, 5]
    assert history[3] == (3, 0.8)  # the resumed run's value, not the lost one


def test_a_folder_that_cannot_be_written_costs_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tensorboard").write_text("a file where the folder goes")
    tracker = _tracker(tmp_path)
    with caplog.at_level(logging.WARNING, "fedretrain.tracking"):
        for n in range(3):
            tracker.round(_round(n, 0.5), {})
        with Registry(tmp_path, create=True) as registry:
            tracker.period(_period(0, 0.9), registry)
            tracker.finish({}, registry)
    warnings = [r for r in caplog.records if r.name == "fedretrain.tracking"]
    assert len(warnings) == 1
    assert "TensorBoard" in warnings[0].getMessage()
    assert "the run goes on" in warnings[0].getMessage()

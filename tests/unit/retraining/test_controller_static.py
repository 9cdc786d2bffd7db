"""A static run is the same controller: one period, a fixed number of rounds, a registry."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import Crash, FakeFederation, MakeController, champion, versions

from fedretrain.checkpoint import CheckpointStore, Plateau, RunState
from fedretrain.registry import Status
from fedretrain.report import RoundRow, RunReport
from fedretrain.retraining.resume import cut_logs
from fedretrain.timeline import Timeline
from fedretrain.validation import Rejection

CONCEPTS = np.full((4, 1), 0.5)  # one period: the static partition


def test_a_static_run_trains_exactly_its_rounds_and_registers_the_last_model(
    make_controller: MakeController,
) -> None:
    federation = FakeFederation(CONCEPTS, step=0.1)
    controller, _ = make_controller(CONCEPTS, fixed_rounds=4, federation=federation)
    summary = controller.run()
    metrics = pd.read_csv(controller.run_dir / "metrics.csv")
    assert metrics["round"].tolist() == [0, 1, 2, 3, 4]  # round 0: the fresh model
    assert metrics["accuracy"].round(4).tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]
    # No statistics: a static run has no monitoring periods. One message wave per round
    # (issue 15, item 2): each round's sites evaluate the model they are sent, then train;
    # only the last model needs a wave of its own.
    assert [what for what, _ in federation.calls] == ["train"] * 4 + ["evaluate"]
    [v1] = versions(controller.run_dir)
    assert (v1.status, v1.rounds, v1.parent, v1.trigger) == (Status.champion, 4, None, "initial")
    # Its validation is the final model's pooled holdout accuracy (it was NaN: issue 16, item 6),
    # its per-site scores in site order.
    assert v1.metrics["validation_accuracy"] == metrics["accuracy"].iloc[-1]
    assert list(v1.site_metrics) == ["0", "1", "2", "3"]
    # The last round's model, not the best (the fresh one jumped to θ; later rounds age it).
    _, weights = champion(controller.run_dir)
    assert weights["age"].tolist() == [4]
    assert summary["final_accuracy"] == 1.0 and summary["serving_version"] == 1
    assert json.loads((controller.run_dir / "summary.json").read_text())["versions"] == 1
    assert not (controller.run_dir / "timeline.csv").exists()


def test_a_killed_static_run_resumes_to_the_same_end(
    make_controller: MakeController, tmp_path: Path
) -> None:
    whole, _ = make_controller(CONCEPTS, fixed_rounds=6, run_dir=tmp_path / "whole")
    whole.run()
    killed = tmp_path / "killed"
    for life in range(20):
        controller, _ = make_controller(
            CONCEPTS,
            fixed_rounds=6,
            run_dir=killed,
            resume=life > 0,
            federation=FakeFederation(CONCEPTS, crash_after=2),
        )
        try:
            controller.run()
            break
        except Crash:
            controller.registry.close()
    assert life >= 3
    for name in ("metrics.csv",):
        ours = pd.read_csv(killed / name).drop(columns="seconds").astype(str)
        ref = pd.read_csv(tmp_path / "whole" / name).drop(columns="seconds").astype(str)
        assert ours.to_dict("records") == ref.to_dict("records")
    assert champion(killed)[1]["w"].tolist() == champion(tmp_path / "whole")[1]["w"].tolist()
    assert len(versions(killed)) == 1


def test_resume_cuts_the_pending_round_and_its_evaluations_rejections(tmp_path: Path) -> None:
    """One wave per round: round 3's row and its evaluation's rejections are made by round 4's
    wave. Killed during round 4, after they were written but before its checkpoint (which
    still says round 3 is pending), resume cuts them, since round 4 runs again and makes them
    again; round 3's own training rejections stay."""
    report = RunReport(tmp_path, 6, io.StringIO())
    for r in range(4):
        report.add(RoundRow.from_eval(r, None, math.nan, 0, 0, 0.0))
    report.reject(Rejection(2, "evaluate", 5, "made by round 3's wave"))
    report.reject(Rejection(3, "train", 7, "made by round 3's wave"))
    report.reject(Rejection(3, "evaluate", 6, "made by round 4's wave"))
    plateau = Plateau(period=0, action="initial", rounds=3, pending=[3, 0.5, 4, 0.1])
    state = RunState(server_round=3, plateau=plateau)
    timeline = Timeline(tmp_path, 1, io.StringIO())
    cut_logs(CheckpointStore(tmp_path / "checkpoint"), state, report, timeline, None)
    assert pd.read_csv(tmp_path / "metrics.csv")["round"].tolist() == [0, 1, 2]
    kept = pd.read_csv(tmp_path / "rejections.csv")
    assert list(zip(kept["round"], kept["phase"], strict=True)) == [(2, "evaluate"), (3, "train")]

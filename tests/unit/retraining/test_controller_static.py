"""A static run is the same controller: one period, a fixed number of rounds, a registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import Crash, FakeFederation, MakeController, champion, versions

from fedretrain.registry import Status

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

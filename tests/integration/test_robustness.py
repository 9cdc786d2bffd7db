"""Bad sites in a real Flower simulation: rejected and recorded while the federation goes on."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def _simulate(out: Path, *overrides: str) -> pd.DataFrame:
    result = subprocess.run(
        [sys.executable, "-m", "fedretrain", "runtime.num_clients=10", f"hydra.run.dir={out}",
         *overrides],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return pd.read_csv(out / "metrics.csv")


def test_scaled_updates_from_two_sites_are_rejected_every_round(tmp_path: Path) -> None:
    table = _simulate(tmp_path, "attack=scale", "attack.fraction=0.2", "runtime.num_rounds=3")
    rejections = pd.read_csv(tmp_path / "rejections.csv")
    train = rejections[rejections["phase"] == "train"]
    assert train.groupby("round")["node_id"].nunique().tolist() == [2, 2, 2]
    assert train["node_id"].nunique() == 2  # the same two sites, every round
    assert train["reason"].str.contains("exceeds the bound").all()
    assert table["train_clients"].tolist()[1:] == [8, 8, 8]
    assert table["accuracy"].iloc[-1] > table["accuracy"].iloc[0] + 0.3


def test_rounds_below_quorum_are_skipped_and_leave_the_model_unchanged(tmp_path: Path) -> None:
    table = _simulate(
        tmp_path, "attack=dropout", "validation.quorum_fraction=0.9", "runtime.num_rounds=4"
    )
    rejections = pd.read_csv(tmp_path / "rejections.csv")
    assert rejections["reason"].str.contains("dropped out").any()
    rounds = table.iloc[1:]
    assert rounds["skipped"].any(), "with 30% dropout a 90% quorum should fail some round"
    for _, row in rounds.iterrows():
        previous = table[table["round"] == row["round"] - 1].iloc[0]
        if row["skipped"]:
            assert row["train_clients"] < 9
            assert row["eval_loss"] == previous["eval_loss"]  # same model, same holdouts
        else:
            assert row["train_clients"] >= 9

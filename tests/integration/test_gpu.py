"""GPU paths: device selection, fractional GPUs per simulated site. Skipped without CUDA."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedretrain.config import compose
from fedretrain.preflight import to_typed
from fedretrain.site import Site
from fedretrain.training import evaluate, train

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_auto_device_puts_the_site_model_on_cuda_and_trains() -> None:
    cfg = to_typed(compose(["runtime.num_clients=2"]))
    site = Site.build(cfg, 0, 2)
    assert site.device.type == "cuda"
    assert next(site.model.parameters()).is_cuda
    before = evaluate(site.model, site.holdout, site.device)
    train(
        site.model,
        site.train_data,
        cfg.train,
        cfg.train.lr,
        site.device,
        torch.Generator().manual_seed(0),
    )
    assert evaluate(site.model, site.holdout, site.device).loss_sum < before.loss_sum


def test_simulation_with_fractional_gpus_per_site(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "fedretrain", "runtime.num_clients=4", "runtime.num_rounds=2",
            "runtime.device=cuda", "runtime.gpus_per_client=0.25", f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["train_clients"].iloc[-1] == 4
    assert table["accuracy"].iloc[-1] > table["accuracy"].iloc[0] + 0.3

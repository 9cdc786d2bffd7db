"""A simulated site that asked for no GPU sees none (issue 16, item 5). fedretrain once set
``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` to silence Ray's start-up tip, which also stopped Ray
from hiding the GPUs from workers with ``num_gpus=0``: on a GPU machine every site with
``runtime.gpus_per_client=0`` would then have trained on CUDA, outside Ray's accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RUN = """
from fedretrain.config import compose
from fedretrain.flower.simulation import simulate
from fedretrain.preflight import to_typed
from visible_gpus_apps import client, server
simulate(server, client, to_typed(compose(["runtime.num_clients=2"])).runtime)
"""


def test_a_site_without_a_gpu_share_sees_no_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpus.json"
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"},
        "GPUS_OUT": str(out),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(out.read_text()) == ["", ""]  # Ray hid every GPU from both sites
    assert "FutureWarning" not in result.stderr  # and its tip about it stayed quiet

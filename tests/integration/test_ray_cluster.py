"""Scale-out on an existing engine (issue 15, item 4): ``runtime.ray_address`` joins a running
Ray cluster (here a head started with ``ray start --head`` on loopback) instead of starting Ray,
and the simulation's workers follow the cluster's CPUs; a wrong address fails with a clear
error before anything trains."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def head():
    """A one-node Ray cluster with 3 CPUs on loopback; its address. Stopped by ending its
    process group (``ray stop`` would stop every Ray on the machine)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    process = subprocess.Popen(
        [
            str(RAY), "start", "--head", "--block", f"--port={port}",
            "--node-ip-address=127.0.0.1", "--num-cpus=3", "--num-gpus=0",
            "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # generous: a busy machine starts Ray slowly
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "the Ray head did not start"
        time.sleep(0.5)
    yield address
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    shutil.rmtree(temp, ignore_errors=True)


def test_a_simulation_joins_a_running_ray_cluster(head: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [
            sys.executable, "-m", "fedretrain", "task=sea_mlp", "runtime.num_clients=5",
            "runtime.num_rounds=2", f"runtime.ray_address={head}", f"hydra.run.dir={out}",
        ],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "simulate.log").read_text()
    assert f"joined the Ray cluster at {head}: 3 CPU" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] > 0.6
    # The cluster ran the job: its control store keeps the finished driver.
    jobs = subprocess.run(
        [sys.executable, "-c", JOBS, head], capture_output=True, text=True, timeout=300
    )
    assert jobs.returncode == 0, jobs.stderr[-3000:]
    finished = json.loads(jobs.stdout.strip().splitlines()[-1])
    assert finished == [True], finished  # one earlier driver, ended: the simulation


JOBS = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
mine = ray.get_runtime_context().get_job_id()
print(json.dumps([j["IsDead"] for j in state.jobs() if j["JobID"] != mine]))
"""


def test_no_cluster_at_the_address_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    result = subprocess.run(
        [
            sys.executable, "-m", "fedretrain", "runtime.num_clients=2", "runtime.num_rounds=1",
            f"runtime.ray_address={address}", f"hydra.run.dir={out}",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"runtime.ray_address={address}: no Ray cluster answers there" in result.stderr
    assert not (out / "metrics.csv").exists()

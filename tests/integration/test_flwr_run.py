"""``flwr run .``: the same app through Flower's CLI and a local SuperLink, in this environment.

``flwr run .`` starts a detached local SuperLink (simulation mode) the first time it needs one
and leaves it running. Here it gets its own Flower home (config, state database, installed
FABs, log) and its own ports, so it neither meets nor changes a SuperLink the developer runs;
it is found by that home in its command line and stopped with everything under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # flwr, flower-superlink, flwr-simulation live beside python
RUN_TIMEOUT_S = 110

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="finds the SuperLink's processes in /proc"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time, command line) for every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[19]), cmdline)
    return table


def _ours(flwr_home: Path) -> dict[int, int]:
    """pid -> start time of the SuperLink run from ``flwr_home`` and all its descendants."""
    table = _processes()
    mine, pid = set(), os.getpid()  # this process and its ancestors may name the path too
    while pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid][0]
    found = {pid for pid, (_, _, cmd) in table.items() if str(flwr_home) in cmd} - mine
    while children := {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found:
        found |= children
    return {pid: table[pid][1] for pid in found}


def _stop(flwr_home: Path, grace_s: float = 5.0) -> dict[int, int]:
    """SIGTERM, then SIGKILL, what runs for ``flwr_home``; returns what survived both.

    Everything is collected before anything is signalled, and kept: Ray's agents outlive a
    killed raylet, orphaned, and ignore SIGTERM. A pid counts only with its start time.
    """
    seen: dict[int, int] = {}

    def alive() -> set[int]:
        table = _processes()
        return {pid for pid, started in seen.items() if pid in table and table[pid][1] == started}

    for sig in (signal.SIGTERM, signal.SIGKILL):
        seen.update(_ours(flwr_home))
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive():
            break
    seen.update(_ours(flwr_home))
    return {pid: seen[pid] for pid in alive()}


def test_flwr_run_trains_three_sites_in_the_current_environment(tmp_path: Path) -> None:
    flwr = BIN / "flwr"
    assert flwr.exists(), f"no flwr beside {sys.executable}: is flwr installed in this venv?"
    flwr_home = tmp_path / "flwr-home"
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        # run the app in this environment instead of a fresh `uv sync` of its dependencies
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        # the CLI starts flower-superlink, which starts flower-superexec, by name
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }
    command = [
        str(flwr),
        "run",
        ".",
        "--run-config",
        f'overrides="runtime.num_rounds=2" run-dir="{run_dir}"',
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
        "--stream",
    ]
    pyproject = (REPO / "pyproject.toml").read_bytes()
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        output = proc.stdout
    except subprocess.TimeoutExpired as err:
        partial = err.stdout or b""  # bytes even with text=True
        output = partial if isinstance(partial, str) else partial.decode(errors="replace")
        output += f"\n[flwr run did not finish within {RUN_TIMEOUT_S} s]"
    finally:
        survivors = _stop(flwr_home)
    elapsed = time.monotonic() - start

    log_file = flwr_home / "local-superlink" / "superlink.log"
    superlink_log = log_file.read_text()[-4000:] if log_file.exists() else "(no superlink.log)"
    context = f"flwr run output:\n{output[-6000:]}\n\nsuperlink.log:\n{superlink_log}"

    assert "Successfully started run" in output, context
    for name in ("metrics.csv", "model.safetensors", "summary.json", "config.yaml"):
        assert (run_dir / name).is_file(), f"{name} missing after {elapsed:.0f} s\n{context}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["clients"] == 3  # runtime.num_clients followed the federation's size
    assert summary["final_accuracy"] > summary["initial_accuracy"], summary
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3, rows  # header, initial evaluation, two rounds
    # `flwr run .` migrates a [tool.flwr.federations] table by rewriting pyproject.toml
    assert (REPO / "pyproject.toml").read_bytes() == pyproject, "flwr run rewrote pyproject.toml"
    assert not survivors, f"processes left running: {sorted(survivors)}"
    # From the moment our ServerApp runs (issue 16, item 5): our line per round instead of
    # Flower's sampling lines, no colour codes in a stream that is no terminal, no Ray tip.
    ours = output[output.index("[fedretrain] initial model") :]
    assert "round 2/2" in ours, context
    assert "\x1b[" not in ours and "Sampled" not in ours, context
    assert "FutureWarning" not in output, context

"""``fedretrain-compare`` with real simulations (issue 16, item 3): progress streams from the
children as they run, and SIGTERM ends every child (no orphan left running) and still writes
what finished. Before, it captured the children's output until they ended, and a SIGTERM left
the running simulation reparented to PID 1."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _processes_naming(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _session_of(pid: int) -> list[int]:
    """The live processes of ``pid``'s session: a child and Ray's processes under it."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[3]) == pid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_progress_streams_and_sigterm_ends_every_child(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    compare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedretrain.compare",
            "scenario=sine_flip",
            "--policies",
            "periodic,never",
            "--jobs",
            "1",
            "--out",
            str(out),
            "runtime.num_clients=2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert compare.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180  # generous: a busy machine starts Python slowly
    # A training round's line: the child has Ray up, with its workers.
    while not any(line.startswith("[periodic] ") and " round " in line for line in lines):
        assert time.monotonic() < deadline, "no progress from the child: " + "".join(lines)
        ready, _, _ = select.select([compare.stdout], [], [], 1.0)
        if ready:
            line = compare.stdout.readline()
            assert line, "compare ended early: " + "".join(lines)
            lines.append(line)
    [child] = _processes_naming(f"hydra.run.dir={out / 'periodic'}")
    session = _session_of(child)
    assert len(session) > 3, session  # the child, Ray's daemons and its workers
    compare.send_signal(signal.SIGTERM)
    rest, _ = compare.communicate(timeout=120)
    assert compare.returncode == 128 + signal.SIGTERM, "".join(lines) + rest
    assert "interrupted: 0 of 2 runs finished" in rest
    time.sleep(1.0)  # a killed child's own children may take a moment to go
    assert _processes_naming(str(out)) == []
    assert _session_of(child) == []  # Ray's processes ended with it
    record = json.loads((out / "comparison.json").read_text())
    assert record["complete"] is False and record["runs"] == []
    assert not (out / "never").exists()  # never started

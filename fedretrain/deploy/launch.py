"""Starting and stopping Flower's processes: the SuperLink or a SuperNode and what they start.

Flower's SuperLink and SuperNode start ``flower-superexec`` detached (a session of its own),
which starts ``flwr-serverapp`` / ``flwr-clientapp``; signalling the parent's process group
does not reach them. :class:`Launched` notes the whole tree while it runs and ends it on stop.
Linux only (the tree is read from ``/proc``); elsewhere only the direct child is stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


def flower_bin(name: str) -> str:
    """The path of Flower's ``name`` executable: beside this Python first, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found beside {sys.executable} nor on PATH: install fedretrain (which "
            "brings flwr) in this environment"
        )
    return found


# Flower's SuperExec looks for a new task (a message to run a ClientApp process for) once a
# second by default; every message of a round waited half of that on average. Its own
# variable, so an operator's value wins.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_S = 0.1


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for a Flower process: its own ``FLWR_HOME``, this Python's ``bin``
    first on ``PATH`` (Flower starts its helpers by name), no update check (offline sites),
    and its SuperExec polling every :data:`SUPEREXEC_POLL_S` unless the environment says."""
    return {
        SUPEREXEC_POLL_ENV: str(SUPEREXEC_POLL_S),
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


@dataclass
class Launched:
    """A Flower process started by us, its log file, and the processes seen below it."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start time

    @classmethod
    def start(cls, name: str, command: list[str], env: dict[str, str], log: Path) -> Launched:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        launched = cls(name, proc, log)
        launched.note_tree()
        return launched

    def note_tree(self) -> None:
        """Remember the processes below ours (call now and then: detached ones lose their
        parent link once it exits)."""
        self.seen.update(descendants([self.proc.pid]))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0, *, kill: bool = False) -> None:
        """SIGTERM the tree, then SIGKILL what is left after ``grace_s``; ``kill``: SIGKILL
        at once (a crash, as tests make one)."""
        self.note_tree()
        for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
            for pid in self.running():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                self.proc.poll()
                if not self.running():
                    return
                time.sleep(0.2)

    def running(self) -> set[int]:
        """The pids of the tree still running (a reused pid is not ours: start times differ)."""
        pids = {pid for pid, started in self.seen.items() if _start_time(pid) == started}
        if self.proc.poll() is None:
            pids.add(self.proc.pid)
        return pids


def descendants(roots: list[int]) -> dict[int, int]:
    """pid -> start time of ``roots`` and every live process below them (Linux)."""
    if not PROC.exists():
        return {}
    table: dict[int, tuple[int, int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = info
    found: dict[int, int] = {}
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            todo.extend(child for child, (parent, _) in table.items() if parent == pid)
    return found


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live, non-zombie process."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _start_time(pid: int) -> int | None:
    info = _stat(pid)
    return None if info is None else info[1]


def wait_for_port(host: str, port: int, launched: Launched, timeout_s: float) -> None:
    """Until ``host:port`` accepts TCP; an error naming the log if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not launched.alive():
            raise RuntimeError(
                f"{launched.name} exited with status {launched.proc.returncode} before "
                f"listening on {host}:{port}; its log ({launched.log}) ends:\n{launched.tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{launched.name}: nothing listened on {host}:{port} within {timeout_s} s")

"""A ``fedretrain-simulate -m`` sweep: its jobs on one Ray cluster, one table, one parent run.

Hydra runs a sweep's jobs one after the other in this process (its basic launcher). Without
help each job would start Ray and stop it again (Flower shuts Ray down at the end of every
simulation), some seconds a job. :class:`Sweep`, a Hydra callback that ``conf/config.yaml``
installs, starts one local Ray head for the whole sweep (``ray start --head`` on loopback, tied
to this process: it ends with the sweep, also when the sweep is killed) and points every job at
it through ``RAY_ADDRESS``, as ``runtime.ray_address`` would. A sweep told where a cluster runs
(``runtime.ray_address`` or ``RAY_ADDRESS``) uses that one.

After each job, ``sweep.csv`` in the sweep folder gains the job's row: its overrides and the
numbers of its ``summary.json``, or how it failed; an interrupted sweep keeps the rows of the
jobs that finished. At the end the table is printed. With ``tracking=mlflow`` the jobs' MLflow
runs nest under one run for the sweep, which keeps the table.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedretrain.atomic import atomic_replace
from fedretrain.tracking import PARENT_ENV, ParentRun

log = logging.getLogger(__name__)

TABLE = "sweep.csv"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
START_TIMEOUT_S = 180.0  # generous: a busy machine starts Ray slowly
STOP_GRACE_S = 30.0

# The Ray head's keeper, leader of its process group: it runs `ray start --head --block` and
# ends the whole group (SIGTERM, then SIGKILL) when asked (SIGTERM) or when the sweep's process
# is gone, also after a kill -9, so that no Ray outlives the sweep.
WATCHDOG = f"""
import os, signal, subprocess, sys, time
parent, asked = os.getppid(), []
signal.signal(signal.SIGTERM, lambda *_: asked.append(1))
head = subprocess.Popen(sys.argv[1:])
while not asked and os.getppid() == parent and head.poll() is None:
    time.sleep(0.5)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
deadline = time.monotonic() + {STOP_GRACE_S}
while head.poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
time.sleep(1)
os.killpg(0, signal.SIGKILL)
"""

# What the table shows of each job's summary.json, where some job has it.
COLUMNS = (
    ("final acc", "final_accuracy", "{:.4f}"),
    ("mean prequential acc", "mean_prequential_accuracy", "{:.4f}"),
    ("retrains", "retrains", "{}"),
    ("false alarms", "false_alarms", "{}"),
    ("max ε", "max_epsilon", "{:.3f}"),
    ("wall s", "wall_seconds", "{:.1f}"),
)


class Sweep(Callback):
    """The Hydra callback of a ``-m`` sweep (see the module's text); a single run ignores it."""

    def __init__(self) -> None:
        self.head: subprocess.Popen[bytes] | None = None
        self.ray_temp: str | None = None
        self.parent: ParentRun | None = None
        self.rows: list[dict[str, Any]] = []
        self.out: Path | None = None
        self.finished = False

    # ------------------------------------------------------------------ Hydra's calls

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.out = Path(config.hydra.sweep.dir)
        self.out.mkdir(parents=True, exist_ok=True)
        in_process = config.hydra.launcher.get("_target_") == BASIC_LAUNCHER
        if in_process and not (config.runtime.ray_address or os.environ.get("RAY_ADDRESS")):
            self._start_head()
        tracking = _tracking(config)
        if tracking is not None:
            self.parent = ParentRun.open(
                tracking, str(config.scenario.name), self.out, f"sweep {self.out.name}"
            )
            if self.parent is not None:
                os.environ.update(self.parent.env)
        # A failed job, Ctrl-C or an exit ends the sweep without on_multirun_end: the head is
        # stopped and the finished jobs' table printed all the same.
        atexit.register(self._finish, False)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.out is None:  # a single run
            return
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg is not None else None
        run_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg is not None else None
        self.rows.append(job_row(job_return, run_dir))
        write_table(self.out / TABLE, self.rows)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(True)
        atexit.unregister(self._finish)

    def _finish(self, complete: bool) -> None:
        if self.finished or self.out is None:
            return
        self.finished = True
        self._stop_head()
        done = sum(r["status"] == "done" for r in self.rows)
        failed = f", {len(self.rows) - done} failed" if done < len(self.rows) else ""
        print(f"\nfedretrain sweep: {done} of {len(self.rows)} jobs done{failed}; {self.out}")
        if self.rows:
            shared = common_overrides(self.rows)
            if shared:
                print(f"every job: {' '.join(shared)}")
            print(format_table(self.rows, leave_out=shared))
            print(f"(table: {self.out / TABLE})")
        if self.parent is not None:
            self.parent.close(self.out, complete=complete, files=[TABLE])
            os.environ.pop(PARENT_ENV, None)

    # ------------------------------------------------------------------ the shared Ray head

    def _start_head(self) -> None:
        """A local Ray head for the sweep's jobs, ended with this process."""
        ray = Path(sys.executable).with_name("ray")
        if not ray.exists():
            return  # no ray command beside this Python: each job starts Ray itself
        port = _free_port()
        self.ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths stay short
        command = [
            str(ray), "start", "--head", "--block", f"--port={port}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={len(os.sched_getaffinity(0))}",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.ray_temp}",
        ]  # fmt: skip
        self.head = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: `ray stop` would stop every Ray here
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(port):
            if self.head.poll() is not None or time.monotonic() > deadline:
                log.warning("could not start a Ray head for the sweep; each job starts Ray")
                self._stop_head()
                return
            time.sleep(0.5)
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        log.info("sweep: one Ray cluster at 127.0.0.1:%d for every job", port)

    def _stop_head(self) -> None:
        if self.head is None:
            return
        os.environ.pop("RAY_ADDRESS", None)
        with contextlib.suppress(ProcessLookupError):
            self.head.terminate()  # the watchdog ends the head's group
        try:
            self.head.wait(timeout=STOP_GRACE_S + 15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.head.pid, signal.SIGKILL)
            self.head.wait()
        self.head = None
        if self.ray_temp is not None:
            shutil.rmtree(self.ray_temp, ignore_errors=True)


def job_row(job_return: JobReturn, run_dir: Path | None) -> dict[str, Any]:
    """A job's row: its number, overrides, status and the numbers of its summary.json."""
    hydra_cfg = job_return.hydra_cfg
    number = int(hydra_cfg.hydra.job.num) if hydra_cfg is not None else -1
    row: dict[str, Any] = {"job": number, "overrides": " ".join(job_return.overrides or ())}
    if job_return.status != JobStatus.COMPLETED:
        error = job_return._return_value  # what the job raised; Hydra re-raises it at the end
        words = " ".join(str(error).split())  # one line in the table, however long the error
        row["status"] = f"failed: {type(error).__name__}: {words}"[:300]
        return row
    row["status"] = "done"
    summary_file = None if run_dir is None else run_dir / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file else {}
    except (OSError, ValueError):
        row["status"] = "no summary.json"
        return row
    for _, key, _ in COLUMNS:
        if key in summary:
            row[key] = summary[key]
    by_site = (summary.get("privacy") or {}).get("epsilon_by_site")
    if by_site:
        row["max_epsilon"] = max(by_site.values())
    row["run_dir"] = str(run_dir)
    return row


def common_overrides(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The overrides every job has, in the first job's order.

    >>> common_overrides([{"overrides": "task=sea_mlp train.lr=0.1"},
    ...     {"overrides": "task=sea_mlp train.lr=0.01"}])
    ['task=sea_mlp']
    """
    first, *others = [str(r["overrides"]).split() for r in rows]
    return [o for o in first if all(o in other for other in others)] if others else []


def format_table(rows: Sequence[dict[str, Any]], leave_out: Sequence[str] = ()) -> str:
    """The sweep's table: a column per number some job reported; each job's overrides less
    ``leave_out`` (those every job shares).

    >>> print(format_table([{"job": 0, "overrides": "train.lr=0.1", "status": "done",
    ...     "final_accuracy": 0.91, "wall_seconds": 12.0},
    ...     {"job": 1, "overrides": "train.lr=9", "status": "failed: ValueError: lr"}]))
    job | overrides    | final acc | wall s | status
    ----+--------------+-----------+--------+-----------------------
    0   | train.lr=0.1 | 0.9100    | 12.0   | done
    1   | train.lr=9   |           |        | failed: ValueError: lr
    """
    columns = [("job", "job", "{}"), ("overrides", "overrides", "{}")]
    columns += [c for c in COLUMNS if any(c[1] in r for r in rows)]
    columns.append(("status", "status", "{}"))
    header = [title for title, _, _ in columns]
    shown = [
        {
            **row,
            "overrides": " ".join(o for o in str(row["overrides"]).split() if o not in leave_out),
        }
        for row in rows
    ]
    body = [[_cell(row.get(key), fmt) for _, key, fmt in columns] for row in shown]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``sweep.csv``, rewritten whole and atomically after each job."""
    fields: list[str] = ["job", "overrides", "status"]
    for row in rows:
        fields += [k for k in row if k not in fields]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_replace(path, write)


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _tracking(config: DictConfig) -> Any:
    """The sweep's TrackingConfig where it asks for MLflow, else None."""
    if config.tracking.backend != "mlflow":
        return None
    from fedretrain.config import TrackingConfig

    return TrackingConfig(**OmegaConf.to_container(config.tracking, resolve=True))  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

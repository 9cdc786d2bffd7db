"""``fedretrain-compare``: one drift scenario under several retraining policies, side by side.

Each policy (and seed) runs as its own simulation (``python -m fedretrain ... policy=P``, a
fresh process and Ray) in ``OUT/P`` (``OUT/P/seed-S`` with ``--seeds``). Their output streams
live, each line prefixed by its run, and is kept in the run's ``compare.log``; ``--jobs`` runs
several at once where the cores allow. The table reads their ``summary.json``; with several
seeds it gives each policy's mean and spread. Interrupted (Ctrl-C, SIGTERM), every child is
ended and the runs finished so far are tabled.

Examples
--------
    fedretrain-compare scenario=sine_flip
    fedretrain-compare scenario=sea_thresholds --policies periodic,triggered --out runs/sea
    fedretrain-compare scenario=sine_flip --seeds 0,1,2 --jobs 2
    fedretrain-compare scenario=sine_staggered --policies triggered,clustered,concept_oracle

``--policies`` takes the single-model policies (``policy=P``) and ``clustered`` (one model per
concept, ``adaptation=clustered``) with ``concept_oracle`` (``adaptation=oracle``, the true
concepts known).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from fedretrain.tracking import ParentRun

if TYPE_CHECKING:
    from fedretrain.config import RunConfig

POLICIES = ("never", "periodic", "triggered", "oracle")  # the default: one global model
# What each name given to --policies runs: the single-model policies, and one model per
# concept (adaptation=clustered) with its baseline that knows the true concepts.
ARMS = {
    **{p: (f"policy={p}",) for p in POLICIES},
    "clustered": ("adaptation=clustered",),
    "concept_oracle": ("adaptation=oracle",),
}
COLUMNS = (
    ("policy", "policy", "{}"),
    ("mean prequential acc", "mean_prequential_accuracy", "{:.4f}"),
    ("retrain rounds", "retrain_rounds", "{}"),
    ("retrains", "retrains", "{}"),
    ("retrain site-rounds", "retrain_site_rounds", "{}"),
    ("retrain MB", "retrain_megabytes", "{:.2f}"),
    ("detection delays", "detection_delays", "{}"),
    ("missed", "missed_changes", "{}"),
    ("false alarms", "false_alarms", "{}"),
    ("wall s", "wall_seconds", "{:.1f}"),
)
EPSILON_COLUMN = ("max ε", "max_epsilon", "{:.2f}")  # shown for DP-SGD runs only
GRACE_S = 10.0  # how long an interrupted child may take to exit before it is killed


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while runs were under way; ``code`` is the exit status to give."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Job:
    """One child simulation: a policy under one seed (None: the overrides' own seed)."""

    policy: str
    seed: int | None
    run_dir: Path
    process: subprocess.Popen[str] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=15))
    pump: threading.Thread | None = None

    @property
    def label(self) -> str:
        return self.policy if self.seed is None else f"{self.policy} seed={self.seed}"


def command(job: Job, overrides: Sequence[str]) -> list[str]:
    """The child's command line: the shared overrides, then its policy, seed and folder."""
    seed = [] if job.seed is None else [f"runtime.seed={job.seed}"]
    return [
        sys.executable,
        "-m",
        "fedretrain",
        *overrides,
        *ARMS[job.policy],
        *seed,
        f"hydra.run.dir={job.run_dir}",
    ]


def start(
    job: Job, overrides: Sequence[str], lock: threading.Lock, env: Mapping[str, str] | None = None
) -> None:
    """Start the child in its own process group (so that ending it ends Ray's processes
    too) and a thread that prints its lines as they come, prefixed by its label."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    job.process = subprocess.Popen(
        command(job, overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    assert job.process.stdout is not None
    job.pump = threading.Thread(target=_pump, args=(job, job.process.stdout, lock), daemon=True)
    job.pump.start()


def _pump(job: Job, stream: IO[str], lock: threading.Lock) -> None:
    with (job.run_dir / "compare.log").open("a") as log:
        for line in stream:
            log.write(line)
            job.tail.append(line.rstrip("\n"))
            with lock:
                print(f"[{job.label}] {line}", end="", flush=True)


def outcome(job: Job) -> dict[str, Any]:
    """A finished job's summary, or its failure with the last lines it printed."""
    assert job.process is not None
    if job.pump is not None:
        job.pump.join(timeout=5)
    summary = job.run_dir / "summary.json"
    code = job.process.returncode
    if code == 0 and summary.exists():
        result: dict[str, Any] = json.loads(summary.read_text())
        privacy = result.get("privacy")  # DP-SGD: the most any site spent, for the table
        if isinstance(privacy, dict) and privacy.get("max_epsilon") is not None:
            result["max_epsilon"] = privacy["max_epsilon"]
        return {**result, "policy": job.policy, "seed": job.seed}
    return {
        "policy": job.policy,
        "seed": job.seed,
        "failed": f"exit {code}",
        "log_tail": list(job.tail),
    }


def end(jobs: Sequence[Job]) -> None:
    """SIGTERM every running child's process group, then SIGKILL what is left after
    :data:`GRACE_S`; returns when every child and every process of its group has exited
    (Ray's daemons can outlive the child that started them by a few seconds)."""
    running = [j.process for j in jobs if j.process is not None and j.process.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(process.pid):
            _signal_group(process, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while _group_alive(process.pid) and time.monotonic() < kill_deadline:
                time.sleep(0.1)


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.killpg(process.pid, sig)  # start_new_session: the group id is the child's pid


def _group_alive(group: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``group``.

    Zombies are left out: a daemon reparented to a PID 1 that does not reap (a container's
    shell) stays a zombie in the group for good, and it no longer runs.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: any member, zombie or not
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


def run_all(
    jobs: Sequence[Job],
    overrides: Sequence[str],
    parallel: int,
    env: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], Interrupted | None]:
    """Run ``jobs``, ``parallel`` at a time; their outcomes in job order, and the interrupt
    that stopped them early (every child then ended), if one did."""
    lock = threading.Lock()
    pending, running = list(jobs), list[Job]()
    done: dict[int, dict[str, Any]] = {}
    interrupted = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                start(job, overrides, lock, env)
                running.append(job)
            for job in [
                j for j in running if j.process is not None and j.process.poll() is not None
            ]:
                running.remove(job)
                done[id(job)] = outcome(job)
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = Interrupted(130)
    except Interrupted as err:
        interrupted = err
    finally:
        signal.signal(signal.SIGTERM, previous)
        if interrupted is not None or pending or running:
            end(running)
    return [done[id(j)] for j in jobs if id(j) in done], interrupted


def _exited(job: Job) -> bool:
    return job.process is not None and job.process.poll() is not None


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(128 + signum)


def aggregate(outcomes: Sequence[dict[str, Any]], policies: Sequence[str]) -> list[dict[str, Any]]:
    """One row per policy: a single run as it is; several seeds as the mean of each number
    (``<key>_sd`` its standard deviation) and lists joined per seed."""
    rows = []
    for policy in policies:
        runs = [o for o in outcomes if o["policy"] == policy and "failed" not in o]
        failed = [o for o in outcomes if o["policy"] == policy and "failed" in o]
        if len(runs) == 1 and not failed:
            rows.append(runs[0])
            continue
        if not runs and not failed:
            continue
        row: dict[str, Any] = {"policy": policy, "seeds": [r["seed"] for r in runs]}
        for _, key, _ in (*COLUMNS[1:], EPSILON_COLUMN):
            values = [r.get(key) for r in runs]
            if all(v is None for v in values):
                continue
            numbers = [float(v) for v in values if isinstance(v, int | float)]
            if values and len(numbers) == len(values):
                row[key] = sum(numbers) / len(numbers)
                row[f"{key}_sd"] = _sd(numbers)
            elif values:
                row[key] = "; ".join(str(v) for v in values)
        if failed:
            row["failed"] = f"{len(failed)} of {len(runs) + len(failed)} runs"
        rows.append(row)
    return rows


def _sd(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the policies' rows (:func:`aggregate`); a mean over seeds shows
    its spread, a failed run says so.

    >>> print(format_table([{"policy": "never", "mean_prequential_accuracy": 0.5,
    ...     "mean_prequential_accuracy_sd": 0.01, "failed": "1 of 3 runs"}]))
    ... # doctest: +NORMALIZE_WHITESPACE
    policy | mean prequential acc | retrain rounds | retrains | retrain site-rounds |
      retrain MB | detection delays | missed | false alarms | wall s | failed
    -------+-...
    never  | 0.5000 ± 0.0100      | None           | None     | None                |
      None       | None             | None   | None         | None   | 1 of 3 runs
    """
    columns = list(COLUMNS)
    if any("max_epsilon" in r for r in rows):  # DP-SGD runs: what retraining cost in ε
        columns.insert(-1, EPSILON_COLUMN)
    if any("failed" in r for r in rows):
        columns.append(("failed", "failed", "{}"))
    header = [title for title, _, _ in columns]
    body = [[_cell(row, key, fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "None" if key != "failed" else ""
    if fmt == "{}" and isinstance(value, float):  # a count, averaged over seeds
        fmt = "{:.1f}"
    try:
        text = fmt.format(value)
    except (ValueError, TypeError):
        return str(value)
    spread = row.get(f"{key}_sd")
    return f"{text} ± {fmt.format(spread)}" if spread is not None else text


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Each policy's mean prequential accuracy (and its spread over seeds) as bars."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    shown = [r for r in rows if isinstance(r.get("mean_prequential_accuracy"), int | float)]
    if not shown:
        return
    fig = Figure(figsize=(6, 3.5))
    axis = fig.subplots()
    means = [r["mean_prequential_accuracy"] for r in shown]
    spreads = [r.get("mean_prequential_accuracy_sd", 0.0) for r in shown]
    axis.bar([r["policy"] for r in shown], means, yerr=spreads, capsize=4)
    axis.set(ylabel="mean prequential accuracy", title="policies compared", ylim=(0, 1))
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@dataclass(frozen=True)
class Plan:
    """What a ``fedretrain-compare`` command line asks for, checked."""

    policies: list[str]
    seeds: list[int | None]
    jobs: int
    out: Path | None
    overrides: list[str]
    config: RunConfig  # the first policy's, as its run will see it


def parse(argv: Sequence[str] | None, prog: str = "fedretrain-compare") -> Plan:
    """The command line as a :class:`Plan`; a bad argument or config exits 2 through argparse,
    before any run starts (the config is composed and checked once, as each run would)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a drift scenario under several retraining policies and compare them.",
        epilog="Other arguments are Hydra overrides for every run, e.g. scenario=sine_flip.",
    )
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated, of {', '.join(ARMS)} (default: {','.join(POLICIES)})",
    )
    parser.add_argument("--out", type=Path, help="folder for the runs (default: outputs/...)")
    parser.add_argument(
        "--seeds", help="comma-separated runtime.seed values: each policy's mean and spread"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 2),
        help="simulations at once (default: half the CPUs; each runs its own Ray)",
    )
    args, overrides = parser.parse_known_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    unknown = [p for p in policies if p not in ARMS]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {list(ARMS)}")
    if not any(o.startswith("scenario=") for o in overrides):
        parser.error("name a drift scenario, e.g. scenario=sine_flip (see conf/scenario/)")
    seeds: list[int | None] = [None]
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--seeds {args.seeds}: give whole numbers, e.g. --seeds 0,1,2")
        if not seeds:
            parser.error("--seeds: give at least one seed, e.g. --seeds 0,1,2")
        if any(o.startswith("runtime.seed=") for o in overrides):
            parser.error("give the seeds with --seeds or runtime.seed=, not both")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")
    configs = [checked_config([*overrides, *ARMS[p]]) for p in policies]  # each arm's own
    arms_of: dict[str, list[str]] = {}
    for policy, checked in zip(policies, configs, strict=True):
        for problem in checked if isinstance(checked, list) else ():
            arms_of.setdefault(problem, []).append(policy)
    if arms_of:
        problems = [
            p if len(arms) == len(policies) else f"{p} (in {', '.join(arms)})"
            for p, arms in arms_of.items()
        ]
        parser.error("invalid configuration: " + "; ".join(problems))
    config = configs[0]
    assert not isinstance(config, list)
    return Plan(policies, seeds, args.jobs, args.out, list(overrides), config)


def checked_config(overrides: Sequence[str]) -> RunConfig | list[str]:
    """The config each run would get, or what it would refuse
    (:func:`fedretrain.preflight.to_typed`, without building targets); Hydra's own overrides
    are left to the runs."""
    from fedretrain.config import check_override_keys, compose
    from fedretrain.errors import ConfigError
    from fedretrain.preflight import to_typed

    ours = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    problems = check_override_keys(ours)
    if problems:
        return problems
    try:
        return to_typed(compose(ours), build_targets=False)
    except ConfigError as err:
        return list(err.problems)
    except Exception as err:  # Hydra's composition errors: a bad group or value
        return [" ".join(str(err).split())]


def main(argv: Sequence[str] | None = None, prog: str = "fedretrain-compare") -> None:
    """The command; ``prog`` names it in usage and errors (``fedretrain compare`` too)."""
    plan = parse(argv, prog)
    policies, seeds, overrides = plan.policies, plan.seeds, plan.overrides
    out = plan.out or Path(time.strftime("outputs/compare-%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        Job(p, s, out / p if s is None else out / p / f"seed-{s}") for p in policies for s in seeds
    ]
    print(f"[fedretrain-compare] {len(jobs)} runs, {plan.jobs} at a time, in {out}", flush=True)
    config = plan.config  # tracking=mlflow: the runs nest under one parent run
    parent = ParentRun.open(config.tracking, config.scenario.name, out, f"compare {out.name}")
    outcomes, interrupted = run_all(jobs, overrides, plan.jobs, parent.env if parent else None)
    rows = aggregate(outcomes, policies)
    table = format_table(rows) if rows else "(no run finished)"
    if interrupted is not None:
        print(f"[fedretrain-compare] interrupted: {len(outcomes)} of {len(jobs)} runs finished")
    print(table)
    for failure in (o for o in outcomes if "failed" in o):
        label = failure["policy"] + ("" if failure["seed"] is None else f" seed={failure['seed']}")
        print(f"[fedretrain-compare] {label} failed ({failure['failed']}):", file=sys.stderr)
        print("\n".join(failure["log_tail"]), file=sys.stderr)
    record = {
        "overrides": list(overrides),
        "seeds": seeds,
        "runs": outcomes,
        "rows": rows,
        "table": table,
        "complete": interrupted is None and len(outcomes) == len(jobs),
    }
    (out / "comparison.json").write_text(json.dumps(record, indent=2, default=str))
    plot(rows, out / "comparison.png")
    if parent is not None:
        complete = interrupted is None and len(outcomes) == len(jobs)
        parent.close(out, complete, ("comparison.json", "comparison.png"))
    print(f"[fedretrain-compare] runs, comparison.json and comparison.png in {out}")
    if interrupted is not None:
        raise SystemExit(interrupted.code)
    if any("failed" in o for o in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

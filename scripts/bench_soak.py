"""Soak (issue 18, item 8): one long stationary simulation; what grows, and false triggers.

One ``python -m fedretrain`` process, as a user starts it, runs ``scenario=stationary`` (SEA,
theta 8 at every site in every period: no drift at all) under the default triggered policy for
``--periods`` periods (1,000 by default), with few sites and the scenario's small windows so that
a period costs little more than the framework's own work: one statistics query, the monitor,
the checkpoint, the period's files. Its run folder and Ray's temporary folder (``RAY_TMPDIR``)
are in a temporary folder of this script's, removed at the end unless ``--keep``.

Every ``--interval`` seconds this script samples, from ``/proc``, the process tree of the run
(the driver and every process descended from it or in its session: Ray's GCS, raylet, workers):
the summed RSS (and PSS, which counts a page shared by several processes once), open file
descriptors, processes and threads; the run folder's size (apparent bytes, disk blocks, files,
and per component: timeline.csv, decisions.jsonl, report.html, checkpoint/, registry, models/
...), Ray's folder size; and the periods done so far (``timeline.csv`` rows).

Growth is a least-squares slope against periods done, per 100 periods, over the samples of the
second half of the run (the first half is warm-up: Ray's workers start, the sites' window caches
fill), and first-to-last between the first sample of the second half and the last sample before
the run's end. Targets:

``memory``        tree RSS slope < 1% of the second half's median RSS per 100 periods
``open files``    tree file-descriptor slope < 1 per 100 periods (no growth)
``processes``     the same processes at the end of the second half as at its start
``folder``        linear in periods with a small constant: bytes per period <= 16 KiB, and the
                  slope of the last quarter <= 1.25 x that of the second quarter (storage that
                  grows faster than the periods, such as a file holding a copy of the whole
                  history per period, would show as a rising slope)
``period cost``   the CPU seconds per period of all the run's processes (from ``/proc``, so a busy
                  machine does not inflate them as it does wall time) grow < 1% of their
                  median per 100 periods; the driver's CPU, the wall time per period and the
                  ``seconds`` of ``timeline.csv`` (which end before the period's report.html is
                  written) are shown beside it
``false triggers``  retrains (and, separately, periods with alarms) after period 0 <= the 99th
                  percentile of Binomial(tested periods, 1 / monitor.arl): the monitor is
                  calibrated to one false alarm per ``monitor.arl`` stationary periods

Results go to ``benchmarks/results/soak.json`` (``--output``): the command and config, the
machine, every sample, the run's timeline summary, the fits and the verdicts, and the printed
table.

Usage
-----
    .venv/bin/python scripts/bench_soak.py                      # 1,000 periods
    .venv/bin/python scripts/bench_soak.py --periods 100 --output /tmp/soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "soak.json"
HZ = os.sysconf("SC_CLK_TCK")
CHILD_TIMEOUT_S = 4 * 3600
# What the run folder's bytes are made of (first match wins; the rest is "other").
COMPONENTS = (
    ("timeline.csv", "timeline.csv"),
    ("decisions.jsonl", "decisions.jsonl"),
    ("report.html", "report.html"),
    ("metrics.csv", "metrics.csv"),
    ("simulate.log", "simulate.log"),
    ("checkpoint/stats/", "checkpoint/stats"),
    ("checkpoint/", "checkpoint (rest)"),
    ("registry.sqlite", "registry.sqlite*"),
    ("models/", "models/"),
)
MEMORY_SLOPE = 0.01  # of the median RSS, per 100 periods
FD_SLOPE = 1.0  # descriptors per 100 periods
BYTES_PER_PERIOD = 16 * 1024
SLOPE_RATIO = 1.25  # last quarter's bytes per period over the second quarter's
TIME_SLOPE = 0.01  # of the median CPU seconds per period, per 100 periods
QUANTILE = 0.99


def overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The run: no drift, the default monitor and triggered policy, a cheap period."""
    return [
        "scenario=stationary",
        "policy=triggered",
        f"scenario.num_periods={args.periods}",
        f"scenario.samples_per_period={args.samples}",
        f"runtime.num_clients={args.sites}",
        f"runtime.seed={args.seed}",
        f"hydra.run.dir={run_dir}",
    ]


# ---------------------------------------------------------------------- sampling /proc


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, name) of every process now."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[3]), name)
    return out


def tree(root: int) -> dict[int, str]:
    """The run's processes: ``root``, its descendants, and any process in its session (a Ray
    process that left the tree); pid -> name, the root named ``driver``."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in found or pid not in procs:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    found |= {pid for pid, (_, sid, _) in procs.items() if sid == root}
    return {pid: ("driver" if pid == root else procs[pid][2]) for pid in found}


def _memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, threads) of ``pid``, in bytes; zeros if it is gone."""
    found = {"Rss:": 0, "Pss:": 0, "Threads:": 0}
    for name in ("smaps_rollup", "status"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                key = line.split(":", 1)[0] + ":"
                if key in found and (name == "status") == (key == "Threads:"):
                    found[key] = int(line.split()[1])
    return found["Rss:"] * 1024, found["Pss:"] * 1024, found["Threads:"]


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample_tree(root: int) -> dict[str, Any]:
    """The tree's summed RSS, PSS, descriptors, threads and CPU seconds, and per process name."""
    procs = tree(root)
    by_name: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {"rss": 0, "pss": 0, "fds": 0, "threads": 0, "cpu_s": 0.0}
    for pid, name in procs.items():
        rss, pss, threads = _memory(pid)
        fds, cpu = _fds(pid), _cpu_seconds(pid)
        entry = by_name.setdefault(name, {"n": 0, "rss": 0, "fds": 0, "cpu_s": 0.0})
        for key, value in (("n", 1), ("rss", rss), ("fds", fds), ("cpu_s", cpu)):
            entry[key] += value
        for key, value in (("rss", rss), ("pss", pss), ("fds", fds), ("threads", threads)):
            totals[key] += value
        totals["cpu_s"] += cpu
    return {**totals, "processes": len(procs), "by_process": by_name}


def folder_size(folder: Path) -> dict[str, Any]:
    """Apparent bytes, disk bytes and files of ``folder``, and apparent bytes per component."""
    parts = {label: 0 for _, label in COMPONENTS} | {"other": 0}
    total = disk = files = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # replaced atomically while we walked
            total += st.st_size
            disk += st.st_blocks * 512
            files += 1
            rel = os.path.relpath(path, folder)
            label = next((lb for prefix, lb in COMPONENTS if rel.startswith(prefix)), "other")
            parts[label] += st.st_size
    return {"bytes": total, "disk_bytes": disk, "files": files, "parts": parts}


def periods_done(run_dir: Path) -> int:
    """Rows of ``timeline.csv`` (written atomically, so a read never sees half a row)."""
    try:
        with (run_dir / "timeline.csv").open() as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    except OSError:
        return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far; 0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / HZ


# ---------------------------------------------------------------------- the run


def soak(args: argparse.Namespace, keep: Path | None) -> dict[str, Any]:
    """Run the simulation and sample it; the samples, wall time, timeline and summary."""
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    run_dir, ray_dir = base / "run", base / "raytmp"
    ray_dir.mkdir()
    command = [sys.executable, "-m", "fedretrain", *overrides(args, run_dir)]
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
        "RAY_TMPDIR": str(ray_dir),
    }
    log_path = base / "run.log"
    print("command:", " ".join(command[1:]), flush=True)
    start = time.time()
    samples: list[dict[str, Any]] = []
    next_report = 100
    with log_path.open("w") as log:
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            while True:
                code = child.poll()
                sample = {
                    "t": round(time.time() - start, 2),
                    "periods": periods_done(run_dir),
                    "load": os.getloadavg()[0],
                    **sample_tree(child.pid),
                    "folder": folder_size(run_dir) if run_dir.exists() else None,
                    "ray_bytes": folder_size(ray_dir)["bytes"],
                }
                if code is None:
                    samples.append(sample)
                if sample["periods"] >= next_report:
                    print(
                        f"  {sample['periods']} periods, {sample['t']:.0f} s: "
                        f"RSS {sample['rss'] / 2**20:.0f} MiB, {sample['fds']} fds, "
                        f"{sample['processes']} processes, folder "
                        f"{sample['folder']['bytes'] / 2**20:.2f} MiB",
                        flush=True,
                    )
                    next_report = (sample["periods"] // 100 + 1) * 100
                if code is not None:
                    break
                if time.time() - start > CHILD_TIMEOUT_S:
                    raise TimeoutError(f"the run took over {CHILD_TIMEOUT_S} s")
                time.sleep(args.interval)
        except BaseException:
            _stop(child)
            print(f"stopped; the run's files are in {base}", file=sys.stderr)
            raise
    wall = time.time() - start
    out: dict[str, Any] = {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "samples": samples,
        "log_tail": log_path.read_text()[-4000:],
    }
    if code == 0:
        out["timeline"] = _read_timeline(run_dir)
        out["summary"] = json.loads((run_dir / "summary.json").read_text())
        out["arl"] = _arl(run_dir)
        out["final_folder"] = folder_size(run_dir)
        out["final_ray_bytes"] = folder_size(ray_dir)["bytes"]
        out["file_sizes"] = {
            str(p.relative_to(run_dir)): p.stat().st_size
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not str(p.relative_to(run_dir)).startswith("checkpoint/stats/")
        }
    try:
        if keep is not None:
            ignore = shutil.ignore_patterns("sockets")  # Ray's sockets cannot be copied
            shutil.copytree(base, keep, symlinks=True, ignore=ignore, dirs_exist_ok=True)
            out["kept"] = str(keep)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def _stop(child: subprocess.Popen[bytes]) -> None:
    """End the run and its Ray processes (its own session)."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


def _read_timeline(run_dir: Path) -> dict[str, Any]:
    with (run_dir / "timeline.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    served = [r for r in rows if int(r["period"]) > 0]
    return {
        "periods": len(rows),
        "tested_periods": len(served),
        "retrain_periods": [int(r["period"]) for r in served if r["retrain"] == "True"],
        "alarm_periods": [int(r["period"]) for r in served if r["alarms"]],
        "alarms": {r["period"]: r["alarms"] for r in served if r["alarms"]},
        "period_seconds": [float(r["seconds"]) for r in rows],
        "rounds": [int(r["rounds"]) for r in rows],
    }


def _arl(run_dir: Path) -> float:
    """``monitor.arl`` of the run, from its resolved config."""
    from omegaconf import OmegaConf

    return float(OmegaConf.load(run_dir / "config.yaml").monitor.arl)


# ---------------------------------------------------------------------- analysis


def slope_per_100(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (periods, value), per 100 periods."""
    if len(points) < 3 or len({p for p, _ in points}) < 2:
        return None
    x = np.array([p for p, _ in points], dtype=float)
    y = np.array([v for _, v in points], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 100)


def growth(samples: list[dict[str, Any]], key: Any, lo: int, hi: int) -> dict[str, Any]:
    """Slope per 100 periods over the samples with ``lo <= periods < hi``, and first-to-last
    over the same samples (per 100 periods as well)."""
    window = [s for s in samples if lo <= s["periods"] < hi and key(s) is not None]
    points = [(s["periods"], float(key(s))) for s in window]
    out: dict[str, Any] = {"samples": len(points), "from_period": lo, "to_period": hi}
    if not points:
        return out
    first, last = points[0], points[-1]
    span = last[0] - first[0]
    out |= {
        "first": first[1],
        "last": last[1],
        "first_period": first[0],
        "last_period": last[0],
        "median": statistics.median(v for _, v in points),
        "min": min(v for _, v in points),
        "max": max(v for _, v in points),
        "slope_per_100": slope_per_100(points),
        "first_to_last_per_100": (last[1] - first[1]) / span * 100 if span else None,
    }
    return out


def rates(samples: list[dict[str, Any]], key: Any, lo: int, hi: int, width: int) -> list[Any]:
    """``[centre, value per period]`` in bins of ``width`` periods: the change of ``key``
    between a bin's first and last sample over the periods done between them."""
    out = []
    for start in range(lo, hi, width):
        points = [
            (s["periods"], key(s))
            for s in samples
            if start <= s["periods"] < min(start + width, hi) and key(s) is not None
        ]
        if len(points) >= 2 and points[-1][0] > points[0][0]:
            rate = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
            out.append([(points[0][0] + points[-1][0]) / 2, rate])
    return out


def rate_growth(
    samples: list[dict[str, Any]], key: Any, lo: int, hi: int, width: int
) -> dict[str, Any]:
    """How a cost per period (CPU or wall seconds) changes: its median over ``lo..hi`` and the
    least-squares slope of the binned rates against periods, per 100 periods."""
    bins = rates(samples, key, lo, hi, width)
    if not bins:
        return {"bins": bins}
    return {
        "bins": bins,
        "median": statistics.median(r for _, r in bins),
        "slope_per_100": slope_per_100([(c, r) for c, r in bins]),
    }


def analyse(run: dict[str, Any], periods: int) -> dict[str, Any]:
    samples = [s for s in run["samples"] if s["periods"] >= 1]  # after the initial training
    half, end = periods // 2, periods  # the last row is written before the run's end work
    quarter = periods // 4

    def folder(field: str) -> Any:
        return lambda s: None if s["folder"] is None else s["folder"][field]

    series = {
        "rss": lambda s: s["rss"],
        "pss": lambda s: s["pss"],
        "fds": lambda s: s["fds"],
        "processes": lambda s: s["processes"],
        "threads": lambda s: s["threads"],
        "driver_rss": lambda s: s["by_process"].get("driver", {}).get("rss"),
        "driver_fds": lambda s: s["by_process"].get("driver", {}).get("fds"),
        "folder_bytes": folder("bytes"),
        "folder_disk_bytes": folder("disk_bytes"),
        "folder_files": folder("files"),
        "ray_bytes": lambda s: s["ray_bytes"],
    }
    out: dict[str, Any] = {
        "second_half": {name: growth(samples, key, half, end) for name, key in series.items()},
        "whole_run": {name: growth(samples, key, 1, end) for name, key in series.items()},
    }
    names = {n for s in samples for n in s["by_process"]}
    out["by_process_rss"] = {
        n: growth(samples, lambda s, n=n: s["by_process"].get(n, {}).get("rss"), half, end)
        for n in sorted(names)
    }
    labels = [label for _, label in COMPONENTS] + ["other"]
    out["folder_parts"] = {
        label: growth(
            samples, lambda s, lb=label: s["folder"] and s["folder"]["parts"][lb], half, end
        )
        for label in labels
    }
    out["folder_quarters"] = {
        "second": growth(samples, folder("bytes"), quarter, half),
        "last": growth(samples, folder("bytes"), end - quarter, end),
    }
    cost = {
        "cpu_s": lambda s: s["cpu_s"],
        "driver_cpu_s": lambda s: s["by_process"].get("driver", {}).get("cpu_s"),
        "wall_s": lambda s: s["t"],
    }
    per_sample = periods / max(len(samples), 1)  # periods between samples, on average
    narrow = max(periods // 20, math.ceil(3 * per_sample))  # bins with a few samples each
    wide = max(periods // 10, math.ceil(3 * per_sample))
    out["per_period"] = {
        name: {
            "second_half": rate_growth(samples, key, half, end, narrow),
            "by_tenth": rates(samples, key, 1, end, wide),
        }
        for name, key in cost.items()
    }
    if "timeline" in run:  # the period's own seconds, before its report.html is written
        seconds = run["timeline"]["period_seconds"]
        idle = [
            (p, s) for p, s in enumerate(seconds) if p >= half and not run["timeline"]["rounds"][p]
        ]
        out["period_seconds"] = {
            "median_second_half": statistics.median(s for _, s in idle) if idle else None,
            "slope_per_100": slope_per_100(idle),
        }
    return out


def verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("met" if ok else "NOT MET")


def targets(run: dict[str, Any], fits: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, threshold, ok) rows."""
    rows: list[tuple[str, str, str, bool | None]] = []
    half = fits["second_half"]
    rss = half["rss"]
    if rss.get("slope_per_100") is not None:
        limit = MEMORY_SLOPE * rss["median"]
        rows.append(
            (
                "memory: tree RSS growth / 100 periods",
                f"{rss['slope_per_100'] / 2**20:+.2f} MiB (median {rss['median'] / 2**20:.0f} MiB)",
                f"< {limit / 2**20:.2f} MiB (1%)",
                rss["slope_per_100"] < limit,
            )
        )
    fds = half["fds"]
    if fds.get("slope_per_100") is not None:
        rows.append(
            (
                "open files: tree fds growth / 100 periods",
                f"{fds['slope_per_100']:+.2f} ({fds['min']:.0f}-{fds['max']:.0f} open)",
                f"< {FD_SLOPE:g}",
                fds["slope_per_100"] < FD_SLOPE,
            )
        )
    procs = half["processes"]
    if "first" in procs:
        rows.append(
            (
                "processes: start -> end of second half",
                f"{procs['first']:.0f} -> {procs['last']:.0f}",
                "equal",
                procs["last"] <= procs["first"],
            )
        )
    size = half["folder_bytes"]
    quarters = fits["folder_quarters"]
    if size.get("slope_per_100") is not None:
        per_period = size["slope_per_100"] / 100
        rows.append(
            (
                "run folder: bytes per period",
                f"{per_period:,.0f}",
                f"<= {BYTES_PER_PERIOD:,}",
                per_period <= BYTES_PER_PERIOD,
            )
        )
        second, last = quarters["second"]["slope_per_100"], quarters["last"]["slope_per_100"]
        if second and last is not None:
            rows.append(
                (
                    "run folder: linear (last / second quarter slope)",
                    f"{last / second:.3f}",
                    f"<= {SLOPE_RATIO}",
                    last / second <= SLOPE_RATIO,
                )
            )
    labels = {
        "cpu_s": "CPU per period (all processes)",
        "driver_cpu_s": "CPU per period (driver)",
        "wall_s": "wall time per period",
    }
    for name, label in labels.items():
        cost = fits["per_period"][name]["second_half"]
        if cost.get("slope_per_100") is None or not cost["median"]:
            continue
        median, slope = cost["median"], cost["slope_per_100"]
        limit = TIME_SLOPE * median
        rows.append(
            (
                f"{label}: growth / 100 periods",
                f"{slope * 1000:+.2f} ms (median {median * 1000:.1f} ms)",
                f"< {limit * 1000:.2f} ms (1%)" if name == "cpu_s" else "(information)",
                slope < limit if name == "cpu_s" else None,
            )
        )
    timing = fits.get("period_seconds", {})
    if timing.get("slope_per_100") is not None and timing["median_second_half"]:
        rows.append(
            (
                "timeline.csv seconds: growth / 100 periods",
                f"{timing['slope_per_100'] * 1000:+.2f} ms "
                f"(median {timing['median_second_half'] * 1000:.1f} ms)",
                "(information)",
                None,
            )
        )
    if "timeline" in run:
        tested, rate = run["timeline"]["tested_periods"], 1 / run["arl"]
        bound = int(stats.binom.ppf(QUANTILE, tested, rate))
        for what, observed in (
            ("false triggers (retrains)", len(run["timeline"]["retrain_periods"])),
            ("periods with alarms", len(run["timeline"]["alarm_periods"])),
        ):
            p_value = float(stats.binom.sf(observed - 1, tested, rate))
            rows.append(
                (
                    f"{what} in {tested} periods",
                    f"{observed} (expected {tested * rate:.2f}, P(>=) {p_value:.3g})",
                    f"<= {bound} (Binomial 99th pct, rate 1/{run['arl']:g})",
                    observed <= bound,
                )
            )
    return rows


def table(rows: list[tuple[str, str, str, bool | None]]) -> str:
    widths = [max(len(r[i]) for r in [("target", "measured", "threshold", "")] + rows)
              for i in range(3)]  # fmt: skip
    head = ("target", "measured", "threshold", "verdict")
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, [*widths, 0], strict=True)).rstrip()]
    for name, measured, threshold, ok in rows:
        cells = (name, measured, threshold)
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + verdict(ok)
        )
    return "\n".join(lines)


def growth_table(fits: dict[str, Any]) -> str:
    """Second-half values and slopes of every sampled quantity and folder component."""
    rows = [("quantity", "first", "last", "slope/100", "first->last/100")]

    def fmt(value: float | None, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "MiB":
            return f"{value / 2**20:.2f}"
        if unit == "KiB":
            return f"{value / 1024:.1f}"
        return f"{value:.1f}"

    units = {"rss": "MiB", "pss": "MiB", "driver_rss": "MiB", "folder_bytes": "KiB",
             "folder_disk_bytes": "KiB", "ray_bytes": "KiB"}  # fmt: skip
    entries = [(k, v, units.get(k, "")) for k, v in fits["second_half"].items()]
    entries += [(f"folder {k}", v, "KiB") for k, v in fits["folder_parts"].items()]
    entries += [(f"RSS {k}", v, "MiB") for k, v in fits["by_process_rss"].items()]
    for name, g, unit in entries:
        if "first" not in g:
            continue
        label = f"{name} ({unit})" if unit else name
        rows.append(
            (
                label,
                fmt(g["first"], unit),
                fmt(g["last"], unit),
                fmt(g["slope_per_100"], unit),
                fmt(g["first_to_last_per_100"], unit),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        r[0].ljust(widths[0])
        + "".join(c.rjust(w + 2) for c, w in zip(r[1:], widths[1:], strict=True))
        for r in rows
    )


def cost_table(fits: dict[str, Any]) -> str:
    """Milliseconds per period in each tenth of the run: CPU of all processes and of the
    driver, and wall time."""
    columns = [fits["per_period"][k]["by_tenth"] for k in ("cpu_s", "driver_cpu_s", "wall_s")]
    lines = [f"{'periods (centre)':>16} {'CPU ms':>8} {'driver ms':>10} {'wall ms':>8}"]
    for (centre, cpu), (_, driver), (_, wall) in zip(*columns, strict=False):
        lines.append(
            f"{centre:>16.0f} {cpu * 1000:>8.1f} {driver * 1000:>10.1f} {wall * 1000:>8.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--periods", type=int, default=1000, help="scenario.num_periods")
    parser.add_argument("--sites", type=int, default=4, help="runtime.num_clients")
    parser.add_argument("--samples", type=int, default=100, help="scenario.samples_per_period")
    parser.add_argument("--seed", type=int, default=0, help="runtime.seed")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the results' JSON")
    parser.add_argument("--keep", type=Path, default=None, help="copy the run and Ray folders here")
    args = parser.parse_args()
    if args.periods < 8:
        parser.error("--periods: at least 8 (the fits need quarters)")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_at_start": os.getloadavg(),
        },
        "config": {
            "overrides": overrides(args, Path("RUN_DIR")),
            "periods": args.periods,
            "sites": args.sites,
            "samples_per_period": args.samples,
            "seed": args.seed,
            "interval_s": args.interval,
            "note": "scenario=stationary (SEA theta 8, no drift); every other key at its default",
        },
        "thresholds": {
            "memory_slope_of_median_per_100": MEMORY_SLOPE,
            "fd_slope_per_100": FD_SLOPE,
            "bytes_per_period": BYTES_PER_PERIOD,
            "folder_slope_ratio": SLOPE_RATIO,
            "cpu_per_period_slope_of_median_per_100": TIME_SLOPE,
            "false_trigger_quantile": QUANTILE,
        },
    }
    print(f"config: {' '.join(results['config']['overrides'])}", flush=True)
    run = soak(args, args.keep)
    results["machine"]["load_at_end"] = os.getloadavg()
    results["run"] = run
    if run["exit_code"] != 0:
        print(f"the run failed (exit {run['exit_code']}):\n{run['log_tail']}", file=sys.stderr)
        args.output.write_text(json.dumps(results, indent=1) + "\n")
        return 1
    fits = analyse(run, args.periods)
    rows = targets(run, fits)
    results["fits"] = fits
    results["verdicts"] = [
        {"target": n, "measured": m, "threshold": t, "verdict": verdict(ok)} for n, m, t, ok in rows
    ]
    printed = (
        f"{args.periods} periods, {args.sites} sites, {args.samples} samples per site-period; "
        f"wall {run['wall_s']:.0f} s, {len(run['samples'])} samples; "
        f"run folder {run['final_folder']['bytes'] / 2**20:.2f} MiB "
        f"({run['final_folder']['files']} files) at the end\n\n"
        + growth_table(fits)
        + "\n\n"
        + cost_table(fits)
        + "\n\n"
        + table(rows)
    )
    results["printed"] = printed
    print()
    print(printed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

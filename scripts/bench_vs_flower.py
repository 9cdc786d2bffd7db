"""The default run against stock Flower, and the time to the first trained round (issue 15).

Two arms, each a whole process as a user starts it, interleaved A B A B (``--pairs``):

``fedretrain``  ``python -m fedretrain`` with no overrides (the README's default run: 10 sites,
                the digits CNN, 10 rounds), its run folder in a temporary folder
``flower``      ``scripts/stock_flower_app.py``: the same work as a stock Flower app built as
                Flower's ``quickstart-pytorch`` builds it, on ``run_simulation`` with Flower's
                defaults (its docstring says what "the same work" holds)

Each process's wall time includes its Python start, imports and Ray's start; its CPU time is
that of the process and every descendant it waited for (``RUSAGE_CHILDREN``; Ray's daemons and
workers are reaped through the driver). Both arms report their final federated accuracy: equal
work ends at about the same accuracy.

Start-up: fedretrain writes round 0's row (the fresh model's evaluation) when round 1's train
replies bring it (one message wave per round), so the time from the process's start to that
line (``[fedretrain] initial model``) is the time to the first trained round. Ray's own start
is timed on its own beside it: a fresh process that imports ray and runs ``ray.init`` with the
same CPUs (its import and start, nothing of ours). Beyond Ray's start is the difference.

Targets (issue 15): the default run at least 2x faster in wall time than the stock app on an
idle machine (the machine's load is recorded with every run), and at most 5 s from the start to
the first trained round beyond Ray's own start.

Results go to ``benchmarks/results/vs_flower.json`` (``--output``) after every run.

Usage
-----
    .venv/bin/python scripts/bench_vs_flower.py
    .venv/bin/python scripts/bench_vs_flower.py --pairs 1 --output /tmp/vs_flower.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIRST_ROUND_LINE = "[fedretrain] initial model"
TIMEOUT_S = 900
RAY_START = (
    "import time; t = time.perf_counter(); import ray; "
    "ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False); "
    "print(time.perf_counter() - t); ray.shutdown()"
)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str], marker: str | None) -> dict[str, Any]:
    """Run ``command`` to its end: wall and CPU seconds, its output, and when (seconds after
    its start) a line starting with ``marker`` first came out."""
    seen: dict[str, float] = {}
    lines: list[str] = []
    cpu = _children_cpu()
    load = os.getloadavg()[0]
    began = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if marker and marker not in seen and line.lstrip().startswith(marker):
                seen[marker] = time.perf_counter() - began
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        status = child.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        status = child.wait()
    wall = time.perf_counter() - began
    reader.join(timeout=10)
    return {
        "status": status,
        "wall_s": wall,
        "cpu_s": _children_cpu() - cpu,
        "marker_s": seen.get(marker or ""),
        "load_at_start": load,
        "load_at_end": os.getloadavg()[0],
        "tail": "".join(lines[-15:]),
    }


def run_arm(arm: str, folder: Path) -> dict[str, Any]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0")}
    if arm == "fedretrain":
        command = [sys.executable, "-m", "fedretrain", f"hydra.run.dir={folder / 'run'}"]
        run = timed(command, env, FIRST_ROUND_LINE)
        summary = folder / "run" / "summary.json"
        if run["status"] == 0 and summary.exists():
            run["final_accuracy"] = float(json.loads(summary.read_text())["final_accuracy"])
    else:
        out = folder / "stock.json"
        command = [sys.executable, str(REPO / "scripts" / "stock_flower_app.py"), "--out", str(out)]
        run = timed(command, env, None)
        if run["status"] == 0 and out.exists():
            run["final_accuracy"] = float(json.loads(out.read_text())["final_accuracy"])
    run["arm"] = arm
    return run


def ray_start(cpus: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", RAY_START.format(cpus=cpus)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(done.stdout.strip().splitlines()[-1])


def table(rows: list[tuple[str, str, str, bool | None]]) -> str:
    width = max(len(r[0]) for r in rows)
    wide = max(len(r[1]) for r in rows)
    out = []
    for name, measured, target, ok in rows:
        verdict = "" if ok is None else ("met" if ok else "NOT MET")
        out.append(f"{name:<{width}}  {measured:<{wide}}  {target:<10} {verdict}".rstrip())
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "vs_flower.json"
    )
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": cpus, "python": platform.python_version()},
        "runs": [],
        "ray_start_s": [],
    }

    def keep() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")

    for pair in range(args.pairs):
        for arm in ("fedretrain", "flower"):
            with tempfile.TemporaryDirectory(prefix=f"vs-{arm}-") as tmp:
                run = run_arm(arm, Path(tmp))
            run["pair"] = pair
            results["runs"].append(run)
            ok = "" if run["status"] == 0 else f"  FAILED (exit {run['status']})"
            print(
                f"pair {pair} {arm:<10}  wall {run['wall_s']:6.1f} s  cpu {run['cpu_s']:6.1f} s"
                f"  acc {run.get('final_accuracy', float('nan')):.4f}"
                f"  load {run['load_at_start']:.2f}{ok}",
                flush=True,
            )
            keep()
        results["ray_start_s"].append(ray_start(cpus))
        keep()

    done = [r for r in results["runs"] if r["status"] == 0]
    rows: list[tuple[str, str, str, bool | None]] = []
    medians: dict[str, dict[str, float]] = {}
    for arm in ("fedretrain", "flower"):
        mine = [r for r in done if r["arm"] == arm]
        if mine:
            medians[arm] = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "cpu_s")}
            accs = ", ".join(f"{r.get('final_accuracy', float('nan')):.4f}" for r in mine)
            rows.append((f"{arm}: wall", f"{medians[arm]['wall_s']:.1f} s", "", None))
            rows.append((f"{arm}: CPU", f"{medians[arm]['cpu_s']:.1f} s", "", None))
            rows.append((f"{arm}: final accuracy", accs, "", None))
    pairs = {}
    for r in done:
        pairs.setdefault(r["pair"], {})[r["arm"]] = r
    ratios = [
        p["flower"]["wall_s"] / p["fedretrain"]["wall_s"] for p in pairs.values() if len(p) == 2
    ]
    if ratios:
        ratio = statistics.median(ratios)
        rows.append(
            ("wall: stock Flower / fedretrain (paired)", f"{ratio:.2f}x", ">= 2", ratio >= 2)
        )
        cpu = statistics.median(
            p["flower"]["cpu_s"] / p["fedretrain"]["cpu_s"] for p in pairs.values() if len(p) == 2
        )
        rows.append(("CPU: stock Flower / fedretrain (paired)", f"{cpu:.2f}x", "", None))
    first = [r["marker_s"] for r in done if r["arm"] == "fedretrain" and r["marker_s"]]
    if first and results["ray_start_s"]:
        to_first = statistics.median(first)
        ray = statistics.median(results["ray_start_s"])
        beyond = to_first - ray
        rows.append(("start -> first trained round", f"{to_first:.1f} s", "", None))
        rows.append(("Ray's own start (import + init)", f"{ray:.1f} s", "", None))
        rows.append(
            ("first trained round beyond Ray's start", f"{beyond:.1f} s", "<= 5 s", beyond <= 5)
        )
    loads = [r["load_at_start"] for r in results["runs"]]
    rows.append(
        ("load average at the runs' starts", f"{min(loads):.2f}-{max(loads):.2f}", "", None)
    )
    printed = table(rows)
    results["table"] = printed
    keep()
    print(printed)
    return 0 if len(done) == len(results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

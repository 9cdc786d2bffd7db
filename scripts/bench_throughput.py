"""Simulation throughput (issue 15): what a round costs beyond the sites' own work, with the
sites run as cohorts and with one Flower node per site.

Arms, each one ``python -m fedretrain`` process as a user starts it, run interleaved
(A B A B ...) so that a busy spell of the shared machine falls on both:

``cohorts``
    The default: ``runtime.workers`` Flower nodes (one per Ray slot), each running a cohort of
    sites per message (:mod:`fedretrain.flower.cohorts`).
``per-site``
    ``runtime.workers`` = the number of sites: every site is a Flower node of its own and gets
    its own messages, as plain Flower runs sites (the code path of fedretrain before cohorts).

Both arms do the same work: a static ``task=sea_mlp`` run (SEA, FedDrift's FNN) where every
site trains and evaluates every round, the same sites, seeds and config. A round's time is the
``seconds`` column of the run's ``metrics.csv`` (train and federated evaluation); the figure per
run is the median of the rounds after the first (round 1 warms Ray's workers up).

``own work`` is the same sites' training and evaluation back to back in this process, without
Flower (:class:`fedretrain.site.SimulatedFederation` sites, ``torch.set_num_threads(1)``),
measured before and after the arms and pooled. ``R_sim`` = round time / own work: with W
workers in parallel the ideal is 1/W, above 1 the framework costs more than it saves.

Points:

``heavy8``    8 sites, about 0.5 s of work each (``train.local_epochs=1200``): R_sim <= 1.05
``step32``    32 sites, one SGD step each: R_sim <= 1.2
``sweep``     8, 32 and 128 sites at the default training: the fixed and per-site costs per arm,
              from a least-squares line through the round times: fixed <= 0.1 s, per-site
              overhead (slope minus own work per site over the workers) <= 5 ms
``scale``     10,000 sites, 1,000 sampled per round, 50 rounds, cohorts only (``--scale-baseline``
              adds the per-site arm for 3 rounds): <= 5 s per round, and the process tree's
              memory (RSS of the run and its Ray processes, sampled at each round's line) grows
              <= 5% between round 5 and round 50

The machine's load average is recorded with every run. Results go to
``benchmarks/results/throughput.json``, rewritten after every run, so a failed or interrupted
arm keeps what ran before it; a run of some ``--points`` replaces those points' results and
keeps the others'.

Usage
-----
    .venv/bin/python scripts/bench_throughput.py                 # everything, about 20 min
    .venv/bin/python scripts/bench_throughput.py --points step32,sweep --pairs 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "throughput.json"
CHILD_TIMEOUT_S = 1800
SAMPLES_PER_SITE = 50  # SEA samples per site: 40 to train, 10 to hold out
ROUND_LINE = re.compile(r"\bround (\d+)/(\d+)")

# point name -> (sites, sites per round, rounds, extra overrides)
POINTS: dict[str, list[tuple[int, int, int, list[str]]]] = {
    "heavy8": [(8, 8, 5, ["train.local_epochs=1200"])],
    "step32": [(32, 32, 6, ["train.local_epochs=1", "train.batch_size=64"])],
    "sweep": [(n, n, 5, []) for n in (8, 32, 128)],
    "scale": [(10_000, 1_000, 50, [])],
}


def overrides(sites: int, per_round: int, rounds: int, extra: list[str]) -> list[str]:
    fraction = per_round / sites
    return [
        "task=sea_mlp",
        f"task.dataset.n_samples={SAMPLES_PER_SITE * sites}",
        f"runtime.num_clients={sites}",
        f"runtime.num_rounds={rounds}",
        f"runtime.fraction_train={fraction}",
        f"runtime.fraction_evaluate={fraction}",
        "validation.node_wait_timeout_s=1200",
        *extra,
    ]


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Ray's processes), in bytes."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_arm(arm: str, sites: int, per_round: int, rounds: int, extra: list[str]) -> dict[str, Any]:
    """One federation in its own process; its round times, wall time and memory per round."""
    import pandas as pd

    workers = [f"runtime.workers={sites}"] if arm == "per-site" else []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"bench-{arm}-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "fedretrain",
            *overrides(sites, per_round, rounds, extra),
            *workers,
            f"hydra.run.dir={run_dir}",
        ]
        env = {
            **os.environ,
            "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
        }
        start = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert child.stdout is not None
        memory: dict[int, int] = {}
        tail: list[str] = []
        for line in child.stdout:
            tail = [*tail[-40:], line]
            found = ROUND_LINE.search(line)
            if found:
                memory[int(found.group(1))] = tree_rss(child.pid)
        code = child.wait(timeout=CHILD_TIMEOUT_S)
        wall = time.perf_counter() - start
        if code != 0 or not (run_dir / "metrics.csv").exists():
            return {"failed": f"exit {code}", "log_tail": "".join(tail)[-3000:], "load": load}
        table = pd.read_csv(run_dir / "metrics.csv")
    seconds = [float(s) for s in table["seconds"]]
    trained = table["train_clients"].iloc[1:].tolist()
    return {
        "round_seconds": seconds,
        "median_round_s": statistics.median(seconds[2:]) if len(seconds) > 2 else seconds[-1],
        "wall_s": wall,
        "trained_per_round": trained,
        "final_accuracy": float(table["accuracy"].iloc[-1]),
        "rss_by_round": memory,
        "load": load,
    }


def own_work(sites: int, per_round: int, extra: list[str], repeats: int = 3) -> float:
    """Seconds for ``per_round`` sites' train + evaluate back to back in this process, without
    Flower: the median of ``repeats`` passes."""
    import torch

    from fedretrain.config import compose
    from fedretrain.preflight import to_typed
    from fedretrain.site import SimulatedFederation
    from fedretrain.training import evaluate, lr_at, train

    torch.set_num_threads(1)
    run = to_typed(compose(overrides(sites, per_round, 2, extra)), build_targets=False)
    federation = SimulatedFederation(run, sites)
    chosen = [federation.site(pid) for pid in range(per_round)]
    state = {k: v.clone() for k, v in chosen[0].model.state_dict().items()}
    passes = []
    for server_round in range(1, repeats + 1):
        lr = lr_at(run.train, server_round, 2)
        start = time.perf_counter()
        for site in chosen:
            site.model.load_state_dict(state)
            seed = np.random.SeedSequence([run.runtime.seed, site.partition_id, server_round])
            generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
            train(site.model, site.train_data, run.train, lr, site.device, generator)
            evaluate(site.model, site.holdout, site.device)
        passes.append(time.perf_counter() - start)
    return statistics.median(passes)


def slots() -> int:
    return len(os.sched_getaffinity(0))


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT MET")


def medians(runs: list[dict[str, Any]]) -> float | None:
    values = [r["median_round_s"] for r in runs if "median_round_s" in r]
    return statistics.median(values) if values else None


def fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(fixed seconds, seconds per site) of a least-squares line through (sites, seconds)."""
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default=",".join(POINTS), help="of: " + ", ".join(POINTS))
    parser.add_argument("--pairs", type=int, default=2, help="A B pairs per point")
    parser.add_argument("--scale-baseline", action="store_true", help="per-site arm at scale")
    args = parser.parse_args()
    chosen = [p for p in args.points.split(",") if p]
    unknown = sorted(set(chosen) - set(POINTS))
    if unknown:
        parser.error(f"unknown points {unknown}; choose from {list(POINTS)}")
    results: dict[str, Any] = {"runs": [], "own_work_s": {}}
    if RESULTS.exists():  # a run of some points keeps the others' results
        results = json.loads(RESULTS.read_text())
        results["runs"] = [r for r in results["runs"] if r["point"].split(":")[0] not in chosen]
        results["own_work_s"] = {
            k: v for k, v in results["own_work_s"].items() if k.split(":")[0] not in chosen
        }
    results["machine"] = {
        "cpus": slots(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    results.setdefault("started", {}).update(
        {name: time.strftime("%Y-%m-%dT%H:%M:%S") for name in chosen}
    )

    def keep() -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")

    for name in chosen:
        for sites, per_round, rounds, extra in POINTS[name]:
            key = f"{name}:{per_round}/{sites}"
            before = own_work(sites, per_round, extra)
            arms = ["cohorts"]
            if name != "scale" or args.scale_baseline:
                arms.append("per-site")
            for pair in range(args.pairs if name != "scale" else 1):
                for arm in arms:
                    r = rounds if not (name == "scale" and arm == "per-site") else 3
                    print(f"{key} pair {pair + 1}: {arm} ...", flush=True)
                    outcome = run_arm(arm, sites, per_round, r, extra)
                    results["runs"].append({"point": key, "arm": arm, "pair": pair, **outcome})
                    shown = outcome.get("median_round_s", outcome.get("failed"))
                    print(f"  {shown} s per round (load {outcome['load']:.2f})", flush=True)
                    keep()
            after = own_work(sites, per_round, extra)
            results["own_work_s"][key] = statistics.median([before, after])
            keep()
    report(results)
    keep()
    return 0


def report(results: dict[str, Any]) -> None:
    """The table: per point and arm the median round, R_sim, and a verdict per target."""
    workers = slots()  # the default runtime.workers: one per CPU
    rows, verdicts = [], []
    by_point: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in results["runs"]:
        by_point.setdefault(run["point"], {}).setdefault(run["arm"], []).append(run)
    for point, arms in by_point.items():
        own = results["own_work_s"].get(point)
        for arm, runs in arms.items():
            median = medians(runs)
            r_sim = None if median is None or not own else median / own
            failed = sum("failed" in r for r in runs)
            rows.append((point, arm, median, own, r_sim, failed))
    print()
    print(f"{'point':22} {'arm':9} {'round s':>8} {'own s':>8} {'R_sim':>6} {'failed':>6}")
    for point, arm, median, own, r_sim, failed in rows:
        m = "-" if median is None else f"{median:.3f}"
        o = "-" if own is None else f"{own:.3f}"
        r = "-" if r_sim is None else f"{r_sim:.2f}"
        print(f"{point:22} {arm:9} {m:>8} {o:>8} {r:>6} {failed:>6}")
    ratio = {(p, a): r for p, a, _, _, r, _ in rows}
    seconds = {(p, a): m for p, a, m, _, _, _ in rows}
    heavy = ratio.get(("heavy8:8/8", "cohorts"))
    verdicts.append(("R_sim at 8 x 0.5 s <= 1.05", heavy, None if heavy is None else heavy <= 1.05))
    step = ratio.get(("step32:32/32", "cohorts"))
    verdicts.append(
        ("R_sim at 32 one-step sites <= 1.2", step, None if step is None else step <= 1.2)
    )
    for arm in ("cohorts", "per-site"):
        points = [
            (int(p.split(":")[1].split("/")[0]), m)
            for (p, a), m in seconds.items()
            if p.startswith("sweep:") and a == arm and m is not None
        ]
        line = fit(points)
        if line is None:
            continue
        fixed, slope = line
        own_points = [
            results["own_work_s"][p] / int(p.split(":")[1].split("/")[0])
            for p in results["own_work_s"]
            if p.startswith("sweep:")
        ]
        own_per_site = statistics.median(own_points) if own_points else 0.0
        overhead = slope - own_per_site / workers
        results.setdefault("fits", {})[arm] = {
            "fixed_s": fixed,
            "per_site_s": slope,
            "own_per_site_s": own_per_site,
            "overhead_per_site_s": overhead,
        }
        if arm == "cohorts":
            verdicts.append(("fixed cost per round <= 0.1 s", fixed, fixed <= 0.1))
            verdicts.append(("per-site overhead <= 5 ms", overhead, overhead <= 0.005))
        print(
            f"fit {arm}: fixed {fixed:.3f} s + {slope * 1000:.2f} ms per site "
            f"(own work {own_per_site * 1000:.2f} ms per site, overhead "
            f"{overhead * 1000:.2f} ms per site beyond it on {workers} workers)"
        )
    scale = seconds.get(("scale:1000/10000", "cohorts"))
    verdicts.append(
        ("1,000 of 10,000 sites <= 5 s per round", scale, None if scale is None else scale <= 5)
    )
    growth = None
    for run in results["runs"]:
        if run["point"].startswith("scale") and run["arm"] == "cohorts" and "rss_by_round" in run:
            rss = {int(k): v for k, v in run["rss_by_round"].items()}
            if 5 in rss and 50 in rss:
                growth = rss[50] / rss[5] - 1
    verdicts.append(
        ("memory growth round 5 -> 50 <= 5%", growth, None if growth is None else growth <= 0.05)
    )
    results["verdicts"] = {name: {"value": v, "verdict": verdict(ok)} for name, v, ok in verdicts}
    print()
    print(f"{'target':42} {'value':>10}  verdict")
    for name, value, ok in verdicts:
        shown = "-" if value is None else f"{value:.4g}"
        print(f"{name:42} {shown:>10}  {verdict(ok)}")


if __name__ == "__main__":
    sys.exit(main())

"""Heterogeneous drift: one model per concept against one global model (issue 14).

Each run is ``python -m fedretrain <overrides> hydra.run.dir=<tmp>`` in its own process (a
fresh Ray), 10 simulated sites. For every scenario and seed it runs five arms:

- ``clustered``: ``adaptation=clustered`` (concept clusters found from per-model scores);
- ``refresh``: the same with ``adaptation.refresh=true`` (a cluster is fine-tuned every period
  while its sites' buffers grow), for information;
- ``oracle``: ``adaptation=oracle``, the same training with each site assigned by its true
  concept (simulation knowledge): what perfect cluster detection reaches;
- ``triggered``, ``periodic``, ``never``: one global model under each policy.

It prints, per scenario and seed, each arm's mean prequential accuracy (periods 1..T), the
training rounds it spent, and for the clustered arms the clusters found against the true
concepts (adjusted Rand index over every site and period from 1 on, from ``clusters.csv``
and the scenario's schedule); then one verdict per target of the issue. A stationary run of
``--stationary-periods`` periods per seed counts clustered's false triggers.

    .venv/bin/python scripts/bench_clustered.py                   # 3 seeds, about an hour
    .venv/bin/python scripts/bench_clustered.py --seeds 0 --jobs 1
    .venv/bin/python scripts/bench_clustered.py --arms oracle --seeds 0 --scenarios sine_flip \
        --reuse benchmarks/results/clustered.json --output /tmp/clustered.json

``--arms`` runs some arms only; ``--reuse FILE`` takes the other arms' runs from an earlier
results file (marked ``reused`` with that file's timestamp: for arms whose code did not change).

Writes ``benchmarks/results/clustered.json`` (``--output``): settings, machine, every run's
figures and the printed table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "clustered.json"
STAGGERED = ("sine_staggered", "circle_staggered", "sea_thresholds_staggered")
SYNCHRONOUS = "sine_flip"
ARMS = {
    "clustered": ["adaptation=clustered"],
    "refresh": ["adaptation=clustered", "adaptation.refresh=true"],
    "oracle": ["adaptation=oracle"],
    "triggered": ["policy=triggered"],
    "periodic": ["policy=periodic"],
    "never": ["policy=never"],
}
SINGLE = ("triggered", "periodic", "never")
CLUSTERED = ("clustered", "refresh", "oracle")


@dataclass
class Run:
    scenario: str
    arm: str
    seed: int
    ok: bool = False
    error: str = ""
    accuracy: float = float("nan")
    rounds: int = 0
    clusters: int | None = None
    ari: float | None = None
    alarm_periods: int = 0
    periods: int = 0
    seconds: float = 0.0
    reused: str = ""  # the timestamp of the results file it was taken from (--reuse)


def truth_of(scenario: str, num_sites: int, num_periods: int, seed: int) -> np.ndarray:
    """The scenario's true concepts, sites x periods, from its config's own schedule."""
    from hydra.utils import instantiate

    node = OmegaConf.load(ROOT / "conf" / "scenario" / f"{scenario}.yaml")
    schedule = instantiate(node.scenario.schedule)
    return schedule(num_sites=num_sites, num_periods=num_periods, seed=seed).concepts


def ari_of(run_dir: Path, truth: np.ndarray) -> float:
    """Adjusted Rand index of the clusters against the true concepts, every (site, period)
    from period 1 on (each period's assignment after its decisions, against its concept)."""
    found, true = [], []
    with open(run_dir / "clusters.csv") as f:
        for row in csv.DictReader(f):
            period, site = int(row["period"]), int(row["site"])
            if period >= 1:
                found.append(int(row["cluster"]))
                true.append(int(truth[site, period]))
    return float(adjusted_rand_score(true, found))


def simulate(scenario: str, arm: str, seed: int, extra: list[str]) -> Run:
    run = Run(scenario, arm, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        overrides = [f"scenario={scenario}", f"runtime.seed={seed}", *ARMS[arm], *extra]
        result = subprocess.run(
            [sys.executable, "-m", "fedretrain", *overrides, f"hydra.run.dir={out}"],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=ROOT,
        )
        run.seconds = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            run.error = (result.stderr or result.stdout)[-600:]
            return run
        summary = json.loads((out / "summary.json").read_text())
        run.ok = True
        run.accuracy = float(summary["mean_prequential_accuracy"])
        run.rounds = int(summary["initial_rounds"]) + int(summary["retrain_rounds"])
        run.alarm_periods = len(summary["alarm_periods"])
        run.periods = int(summary["periods"])
        if arm in CLUSTERED:
            run.clusters = int(summary["clusters_serving"])
            truth = truth_of(scenario, 10, run.periods, seed)
            run.ari = ari_of(out, truth)
    return run


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def table(runs: list[Run]) -> str:
    lines = [
        "scenario                 | seed | arm       | mean acc | rounds | clusters | ARI   | run",
        "-------------------------+------+-----------+----------+--------+----------+-------+----",
    ]
    for r in runs:
        if r.periods and r.scenario == "stationary":
            continue
        acc = f"{r.accuracy:8.4f}" if r.ok else "  failed"
        clusters = "" if r.clusters is None else str(r.clusters)
        ari = "" if r.ari is None else f"{r.ari:.3f}"
        lines.append(
            f"{r.scenario:<24} | {r.seed:>4} | {r.arm:<9} | {acc} | {r.rounds:>6} | "
            f"{clusters:>8} | {ari:<5} | {'reused ' + r.reused if r.reused else 'now'}"
        )
    return "\n".join(lines)


def arm_mean(runs: list[Run], scenario: str, arm: str) -> float:
    return mean([r.accuracy for r in runs if r.scenario == scenario and r.arm == arm and r.ok])


def verdicts(runs: list[Run]) -> list[dict[str, Any]]:
    out = []
    for scenario in STAGGERED:
        c, o = arm_mean(runs, scenario, "clustered"), arm_mean(runs, scenario, "oracle")
        out.append(
            {
                "target": f"{scenario}: clustered within 2 points of the oracle",
                "value": f"{100 * (c - o):+.1f} points ({c:.4f} vs {o:.4f})",
                "met": c >= o - 0.02,
            }
        )
    best = max(arm_mean(runs, "sine_staggered", a) for a in SINGLE)
    c = arm_mean(runs, "sine_staggered", "clustered")
    out.append(
        {
            "target": "sine_staggered: clustered 20 points above the best single-model policy",
            "value": f"{100 * (c - best):+.1f} points ({c:.4f} vs {best:.4f})",
            "met": c >= best + 0.20,
        }
    )
    c, t = arm_mean(runs, SYNCHRONOUS, "clustered"), arm_mean(runs, SYNCHRONOUS, "triggered")
    collapsed = all(
        r.clusters == 1 for r in runs if r.scenario == SYNCHRONOUS and r.arm == "clustered"
    )
    out.append(
        {
            "target": f"{SYNCHRONOUS} (synchronous): clustered no worse than triggered by 0.5 "
            "points, one model at the end",
            "value": f"{100 * (c - t):+.1f} points; one model at the end: {collapsed}",
            "met": c >= t - 0.005 and collapsed,
        }
    )
    still = [r for r in runs if r.scenario == "stationary" and r.ok]
    periods = sum(r.periods - 1 for r in still)
    alarms = sum(r.alarm_periods for r in still)
    out.append(
        {
            "target": "stationary: at most 1 false trigger per 1,000 periods (clustered)",
            "value": f"{alarms} in {periods} periods",
            "met": bool(still) and alarms * 1000 <= max(periods, 1),
        }
    )
    return out


def verdict(row: dict[str, Any]) -> str:
    if "nan" in row["value"]:
        return "not measured (scenario not run)"
    return "met" if row["met"] else "NOT met"


def machine_info(load_start: tuple[float, ...]) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "flwr": version("flwr"),
        "loadavg_1_5_15_at_start": list(load_start),
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
    }


def reused_runs(path: Path, arms: list[str]) -> list[Run]:
    """The runs of the arms not in ``arms`` from an earlier results file, marked with its
    timestamp (a stationary run belongs to the clustered arm)."""
    earlier = json.loads(path.read_text())
    stamp = earlier["machine"]["timestamp"]
    kept = [
        Run(**{**raw, "reused": raw.get("reused") or stamp})
        for raw in earlier["runs"]
        if raw["arm"] not in arms
    ]
    print(f"reused {len(kept)} runs of {path} ({stamp})", flush=True)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scenarios", default=",".join((*STAGGERED, SYNCHRONOUS)))
    parser.add_argument("--stationary-periods", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="simulations at once")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--arms", default=",".join(ARMS), help="the arms to run")
    parser.add_argument("--reuse", type=Path, help="results file to take the other arms from")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; the arms are {list(ARMS)}")
    load_start = os.getloadavg()
    # Arms of one scenario and seed run next to each other, so they meet the same load.
    plan: list[tuple[str, str, int, list[str]]] = [
        (scenario, arm, seed, [])
        for scenario in args.scenarios.split(",")
        for seed in seeds
        for arm in arms
    ]
    if "clustered" in arms:
        plan += [
            ("stationary", "clustered", seed, [f"scenario.num_periods={args.stationary_periods}"])
            for seed in seeds
        ]
    reused = reused_runs(args.reuse, arms) if args.reuse else []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(simulate, *job) for job in plan]
        runs = []
        for future in futures:
            run = future.result()
            runs.append(run)
            state = f"{run.accuracy:.4f}" if run.ok else f"FAILED {run.error[-200:]}"
            print(
                f"[{len(runs)}/{len(plan)}] {run.scenario} {run.arm} seed {run.seed}: {state}",
                flush=True,
            )
    scenarios = [*args.scenarios.split(","), "stationary"]
    order = list(ARMS)
    runs = sorted(
        runs + reused,
        key=lambda r: (
            scenarios.index(r.scenario) if r.scenario in scenarios else 99,
            r.seed,
            order.index(r.arm),
        ),
    )
    printed = table(runs)
    results = verdicts(runs)
    lines = [printed, "", "target | value | verdict"]
    lines += [f"{v['target']} | {v['value']} | {verdict(v)}" for v in results]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "settings": vars(args) | {"output": str(args.output)},
                "machine": machine_info(load_start),
                "runs": [asdict(r) for r in runs],
                "verdicts": results,
                "printed": text,
            },
            indent=2,
            default=str,
        )
    )
    print(f"results in {args.output}")
    if any(not r.ok for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

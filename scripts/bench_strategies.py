"""How to retrain: ``retrain.strategy=auto`` against each fixed strategy (issue 17, item 2).

Each run is ``python -m fedretrain scenario=S <arm> runtime.seed=K`` in its own process, 10
simulated sites, the default triggered policy. Arms:

- ``incremental``, ``full``, ``transfer``, ``reuse``: ``retrain.strategy=<arm>``, one way to
  retrain every time (reuse fine-tunes when no stored version is back);
- ``auto``: ``retrain.strategy=auto retrain.candidates=[incremental,full,transfer]``: reuse a
  stored version that wins, else a tournament of the three, federated validation picks;
- ``default``: the shipped config (auto with one candidate, incremental: a warm fine-tune that
  re-initialises when it stalls), for reference.

The figure is the mean prequential accuracy over periods 1.. (``timeline.csv``: each period's
new data scored by the model that served when it came) and the training rounds the run spent
(all retrains, every candidate included). The target: ``auto`` within 0.5 points of the best
fixed strategy on every scenario, a verdict per scenario. The arms run interleaved (scenario
by scenario, every arm, seed by seed), ``--jobs`` at a time; the results file is rewritten
after every run, so a failed or interrupted run keeps the others.

    .venv/bin/python scripts/bench_strategies.py               # every shipped scenario, ~40 min
    .venv/bin/python scripts/bench_strategies.py --scenarios sea_thresholds --seeds 0 1

Writes ``benchmarks/results/strategies.json`` (``--output``): settings, machine, every run's
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "strategies.json"
# Every shipped drift scenario but the deployment's (real folders) and none (a static run).
SCENARIOS = tuple(
    sorted(
        p.stem
        for p in (ROOT / "conf" / "scenario").glob("*.yaml")
        if p.stem not in ("deployed", "none")
    )
)
FIXED = ("incremental", "full", "transfer", "reuse")
ARMS = {
    **{name: [f"retrain.strategy={name}"] for name in FIXED},
    "auto": ["retrain.strategy=auto", "retrain.candidates=[incremental,full,transfer]"],
    "default": [],
}
SITES = 10
MARGIN = 0.005  # auto within half a point of the best fixed strategy


@dataclass
class Run:
    scenario: str
    arm: str
    seed: int
    ok: bool = False
    error: str = ""
    mean_accuracy: float = float("nan")
    rounds: int = 0
    retrains: int = 0
    seconds: float = float("nan")


def simulate(scenario: str, arm: str, seed: int) -> Run:
    run = Run(scenario, arm, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"strategies-{arm}-") as tmp:
        out = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "fedretrain", f"scenario={scenario}", *ARMS[arm],
            f"runtime.seed={seed}", f"runtime.num_clients={SITES}", f"hydra.run.dir={out}",
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            run.error = "timed out after 1800 s"
            return run
        run.seconds = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            run.error = (result.stderr or result.stdout)[-1500:]
            return run
        with (out / "timeline.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        run.mean_accuracy = statistics.fmean(float(r["accuracy"]) for r in rows[1:])
        run.rounds = sum(int(r["rounds"]) for r in rows[1:])  # the retrains', period 0 aside
        run.retrains = sum(r["retrain"] == "True" for r in rows[1:])
        run.ok = True
    return run


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else float("nan")


def summarise(runs: list[Run]) -> list[dict[str, object]]:
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in runs):
        by_arm = {}
        for arm in ARMS:
            done = [r for r in runs if r.scenario == scenario and r.arm == arm and r.ok]
            by_arm[arm] = {
                "runs": len(done),
                "accuracy": mean([r.mean_accuracy for r in done]),
                "rounds": mean([float(r.rounds) for r in done]),
            }
        fixed = {a: by_arm[a]["accuracy"] for a in FIXED if by_arm[a]["runs"]}
        best = max(fixed, key=lambda a: fixed[a]) if fixed else ""
        gap = by_arm["auto"]["accuracy"] - fixed[best] if best else float("nan")
        # The accuracies are means of exact fractions (correct / examples): compare at 1e-9,
        # so that a gap of exactly half a point is not lost to float rounding.
        met = round(gap, 9) >= -MARGIN
        verdict = "MET" if met else ("NOT MET" if gap == gap else "no result")
        rows.append(
            {"scenario": scenario, "arms": by_arm, "best_fixed": best, "gap": gap,
             "verdict": verdict}
        )  # fmt: skip
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = f"{'scenario':<26}" + "".join(f"{a:>15}" for a in ARMS) + f"{'best fixed':>13}"
    head += f"{'auto - best':>13}  verdict"
    lines = [
        "mean prequential accuracy over periods 1.. (training rounds in retrains)",
        head,
        "-" * len(head),
    ]
    for r in rows:
        arms = r["arms"]
        assert isinstance(arms, dict)
        cells = "".join(f"{arms[a]['accuracy']:>8.4f} ({arms[a]['rounds']:>3.0f})" for a in ARMS)
        lines.append(
            f"{r['scenario']:<26}{cells}{r['best_fixed']:>13}{r['gap']:>+13.4f}  {r['verdict']}"
        )
    met = sum(r["verdict"] == "MET" for r in rows)
    lines.append(
        f"\n{'MET' if met == len(rows) else 'NOT MET'} auto within {MARGIN * 100:.1f} points "
        f"of the best fixed strategy: {met} of {len(rows)} scenarios"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_start = os.getloadavg()
    jobs = [(s, a, k) for s in args.scenarios for k in args.seeds for a in ARMS]
    runs: list[Run] = []
    lock = threading.Lock()

    def write(printed: str) -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "settings": {"scenarios": args.scenarios, "seeds": args.seeds, "jobs": args.jobs,
                         "arms": ARMS, "sites": SITES, "margin": MARGIN},
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_start": load_start,
                "load_end": os.getloadavg(),
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            "scenarios": summarise(runs),
            "runs": [asdict(r) for r in runs],
            "table": printed,
        }  # fmt: skip
        args.output.write_text(json.dumps(record, indent=2))

    def job(spec: tuple[str, str, int]) -> None:
        run = simulate(*spec)
        with lock:
            runs.append(run)
            status = "ok" if run.ok else f"FAILED: {run.error[-300:]}"
            print(f"{run.scenario} {run.arm} seed {run.seed}: {run.mean_accuracy:.4f}, "
                  f"{run.rounds} rounds, {run.seconds} s, {status}", flush=True)  # fmt: skip
            write("")

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(job, jobs))
    order = {spec: i for i, spec in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r.scenario, r.arm, r.seed)])
    printed = table(summarise(runs))
    print(printed)
    write(printed)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
